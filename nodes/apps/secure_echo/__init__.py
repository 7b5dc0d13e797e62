"""secure_echo: an example user program that keys AES-256-GCM messages over ETSI GS QKD 014.

Run on nodes with ``[[nodes.run]] command = ["python", "-m", "nodes.apps.secure_echo", ...]``
(docs/kms.md); ``etsi014`` is a stdlib-only ETSI 014 client any program could copy.
"""
