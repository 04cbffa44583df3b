"""Write the example web-server access log, ``access.log``, the same way every time.

Half an hour of a small online shop in Combined Log Format (as Apache and nginx write
it): pages, static assets, an API, a crawler, a vulnerability scanner, and a short
incident around minute 17 when the order API answers 500/503. About 1% of the lines are
damaged the way real logs get damaged: cut short, two writes run together, or noise.

Run it from the repository root to regenerate the committed file::

    python -m examples.access_logs.generate            # writes examples/access_logs/access.log
    python -m examples.access_logs.generate -o x.log --lines 100000

Example:
    >>> lines = build(lines=5, seed=1)
    >>> len(lines)
    5
"""

from __future__ import annotations

import argparse
import random
import string
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

__all__ = ["DEFAULT_PATH", "build", "main", "write"]

DEFAULT_PATH = Path(__file__).with_name("access.log")
START = datetime(2024, 3, 12, 14, 0, 0, tzinfo=timezone(timedelta(hours=1)))
SPAN_S = 30 * 60
INCIDENT_S = (17 * 60, 19 * 60)
MALFORMED_RATE = 0.01
SITE = "https://shop.example.com"

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.3.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/122.0.6261.105 Mobile Safari/537.36",
)
CRAWLER = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SCANNER = "Mozilla/5.0 zgrab/0.x"
API_CLIENTS = ("python-requests/2.31.0", "okhttp/4.12.0", "curl/8.5.0")
PROBES = (
    "/wp-login.php",
    "/.env",
    "/phpmyadmin/index.php",
    "/admin/config.php",
    "/.git/config",
    "/cgi-bin/luci",
)
ASSETS = (
    ("/static/css/app.3f9c2e.css", 48_213),
    ("/static/js/app.81b4e7.js", 231_877),
    ("/static/js/vendor.c02d11.js", 512_904),
    ("/static/fonts/inter-var.woff2", 98_112),
    ("/favicon.ico", 15_086),
)
SEARCHES = ("kettle", "espresso+grinder", "teapot", "milk+frother", "mugs", "filter+papers")


_CUM_WEIGHTS = [sum(1 / (rank + 1) for rank in range(n + 1)) for n in range(140)]


def build(*, lines: int = 3000, seed: int = 1312) -> list[str]:
    """Return the log as a list of lines (without newlines), oldest first.

    Args:
        lines: How many lines, damaged ones included.
        seed: Seed of the pseudo-random choices.
    """
    rng = random.Random(seed)
    clients = [_client_ip(rng) for _ in range(140)]
    offsets = sorted(rng.uniform(0, SPAN_S) for _ in range(lines))
    damaged = set(rng.sample(range(lines), round(lines * MALFORMED_RATE)))
    out = []
    for i, offset in enumerate(offsets):
        when = START + timedelta(seconds=offset)
        line = _line(rng, clients, when)
        if i in damaged:
            line = _damage(rng, line, _line(rng, clients, when))
        out.append(line)
    return out


def _client_ip(rng: random.Random) -> str:
    first = rng.choice((31, 46, 77, 81, 93, 109, 145, 178, 185, 212, 217))
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _line(rng: random.Random, clients: list[str], when: datetime) -> str:
    """One well-formed Combined Log Format line for a request at ``when``."""
    roll = rng.random()
    if roll < 0.04:
        ip, agent = f"66.249.66.{rng.randrange(1, 200)}", CRAWLER
        method, path, status, size, referrer = _crawl(rng)
    elif roll < 0.06:
        ip, agent = "185.220.101.47", SCANNER
        method, path, status, size, referrer = "GET", rng.choice(PROBES), 404, 153, "-"
    else:
        # A few clients make many requests, most make a handful (a Zipf-like spread).
        ip = rng.choices(clients, cum_weights=_CUM_WEIGHTS)[0]
        agent = rng.choice(AGENTS)
        method, path, status, size, referrer = _visit(rng, when)
        if path.startswith("/api/"):
            agent = rng.choice(API_CLIENTS)
    stamp = when.strftime("%d/%b/%Y:%H:%M:%S %z")
    user = "-" if rng.random() > 0.01 else "mia"
    shown = "-" if size == 0 else str(size)
    return (
        f'{ip} - {user} [{stamp}] "{method} {path} HTTP/1.1" {status} {shown} '
        f'"{referrer}" "{agent}"'
    )


def _crawl(rng: random.Random) -> tuple[str, str, int, int, str]:
    if rng.random() < 0.1:
        return "GET", "/robots.txt", 200, 67, "-"
    product = rng.randrange(1000, 1400)
    if product > 1380:
        return "GET", f"/products/{product}", 404, 4_212, "-"
    if product % 17 == 0:
        return "GET", f"/product.php?id={product}", 301, 0, "-"
    return "GET", f"/products/{product}", 200, rng.randrange(18_000, 42_000), "-"


def _visit(rng: random.Random, when: datetime) -> tuple[str, str, int, int, str]:
    """A shopper's request: page, asset, search, or an API call."""
    roll = rng.random()
    if _incident(when) and roll >= 0.45 and rng.random() < 0.3:
        # The upstream app server is overloaded: the proxy answers for it.
        status = rng.choice((502, 503, 504))
        return rng.choice(("GET", "POST")), "/api/v1/orders", status, 157, f"{SITE}/cart"
    page = f"{SITE}/products/{rng.randrange(1000, 1380)}"
    if roll < 0.35:
        path, size = rng.choice(ASSETS)
        if rng.random() < 0.45:
            return "GET", path, 304, 0, f"{SITE}/"
        return "GET", path, 200, size, f"{SITE}/"
    if roll < 0.45:
        image = f"/images/products/{rng.randrange(1000, 1380)}.webp"
        return "GET", image, 200, rng.randrange(20_000, 160_000), page
    if roll < 0.55:
        query = rng.choice(SEARCHES)
        return "GET", f"/search?q={query}", 200, rng.randrange(9_000, 30_000), f"{SITE}/"
    if roll < 0.62:
        return _order(rng, when, page)
    if roll < 0.64:
        return "GET", "/cart/", 301, 0, page
    if roll < 0.66:
        return "POST", "/login", rng.choice((302, 302, 401)), rng.randrange(0, 800), f"{SITE}/login"
    if roll < 0.70:
        product = rng.randrange(1000, 1500)
        status = 404 if product >= 1380 else 200
        return "GET", f"/products/{product}", status, rng.randrange(4_000, 40_000), f"{SITE}/"
    if roll < 0.72:
        return "HEAD", "/", 200, 0, "-"
    paths = ("/", "/products", "/cart", "/account", "/about", "/contact")
    return "GET", rng.choice(paths), 200, rng.randrange(6_000, 28_000), rng.choice(("-", page))


def _order(rng: random.Random, when: datetime, page: str) -> tuple[str, str, int, int, str]:
    """An API call: placing or listing orders, failing more during the incident."""
    failing = 0.6 if _incident(when) else 0.01
    method, path = rng.choice((("POST", "/api/v1/orders"), ("GET", "/api/v1/orders?page=1")))
    if rng.random() < failing:
        return method, path, rng.choice((500, 502, 503)), rng.randrange(150, 600), page
    if method == "POST" and rng.random() < 0.05:
        return method, path, 422, rng.randrange(90, 300), page
    return method, path, 201 if method == "POST" else 200, rng.randrange(300, 4_000), page


def _incident(when: datetime) -> bool:
    return INCIDENT_S[0] <= (when - START).total_seconds() < INCIDENT_S[1]


def _damage(rng: random.Random, line: str, other: str) -> str:
    """Break a line: cut it short, run another write into it, or replace it with noise."""
    kind = rng.randrange(3)
    if kind == 0:
        return line[: rng.randrange(8, len(line) - 2)]
    if kind == 1:
        # Cut after the request, so the broken line can never parse by accident.
        return line[: rng.randrange(line.index('HTTP/1.1"') + 10, len(line) - 2)] + other
    noise = string.ascii_letters + string.digits + string.punctuation + " "
    return "".join(rng.choice(noise) for _ in range(rng.randrange(12, 90)))


def write(path: Path = DEFAULT_PATH, *, lines: int = 3000, seed: int = 1312) -> Path:
    r"""Write the log to ``path`` (one line each, ``\n``-terminated) and return ``path``."""
    path.write_text("".join(f"{line}\n" for line in build(lines=lines, seed=seed)))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m examples.access_logs.generate [-o PATH] [--lines N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1312)
    args = parser.parse_args(argv)
    print(write(args.output, lines=args.lines, seed=args.seed))


if __name__ == "__main__":
    main()
