"""{{name}}: the check's judgement in plain Python, tested natively by test_logic.py.

Healthy when the revision's address accepts a TCP connection.
"""

from urllib.parse import urlsplit


def address(endpoints):
    """(host, port) of the first URL given as (kind, url) pairs, the revision's own first."""
    ordered = sorted(endpoints, key=lambda e: e[0] != "revision")
    if not ordered:
        raise ValueError("the provider lists no URL to check")
    url = urlsplit(ordered[0][1])
    if not url.hostname:
        raise ValueError(f"{ordered[0][1]!r} names no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname, port


def verdict(connected):
    return "healthy" if connected else "unhealthy"
