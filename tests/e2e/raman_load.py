"""A [[nodes.run]] program for the Raman e2e test: ``load`` sends zeros to bob's program at
LOAD_BYTES_PER_S through its node's tunnel (so over the link's relay), paced by the clock;
``sink`` (bob, listen = true) reads and discards. Either ends quietly when the run closes it."""

import os
import socket
import sys
import time


def load() -> None:
    rate = float(os.environ["LOAD_BYTES_PER_S"])
    host, port = os.environ["QNET_PEER_BOB"].split(":")
    for _ in range(200):  # bob's sink may start a moment later
        try:
            sock = socket.create_connection((host, int(port)))
            break
        except OSError:
            time.sleep(0.02)
    else:
        sys.exit(3)
    chunk, sent, start = b"\0" * 8192, 0, time.monotonic()
    try:
        while True:
            delay = start + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # the run ended and the tunnel closed
        pass


def sink() -> None:
    host, port = os.environ["QNET_LISTEN"].split(":")
    server = socket.create_server((host, int(port)))
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                while conn.recv(1 << 16):
                    pass
            except OSError:
                pass


if __name__ == "__main__":
    {"load": load, "sink": sink}[sys.argv[1]]()
