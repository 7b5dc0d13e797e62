"""Trusted key relay: end-to-end keys over chains of QKD links, one-time-padded hop by hop."""
