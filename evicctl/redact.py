"""What may be shown of a connection URL: never its password.

Remote-tier URLs (`redis://user:pass@host:6379/0`, `rediss://...` for TLS) appear in errors,
logs, `evicctl tiers` and the dashboard; everything that prints one prints `redact_url(url)`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***; the user name stays (it says who connects)."""
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:  # not a URL we can take apart (a bad port, say): show none of it
        return HIDDEN
    if password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:{HIDDEN}@{host}" + (f":{port}" if port else "")
    return urlunsplit(parts._replace(netloc=netloc))
