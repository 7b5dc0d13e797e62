"""Node-level services (not apps): the key manager and the ETSI GS QKD 014 key service.

``keys`` stores QKD output durably per node (SQLite); ``kme`` serves it to SAEs over HTTPS
with mutual TLS and tells the peer KMEs which keys to release to whom.
"""
