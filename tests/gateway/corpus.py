"""Synthetic PII (valid check digits) and look-alike negatives, from a seeded generator."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable

from edge.gateway.guard.detectors import IBAN_LENGTHS

Positive = tuple[str, str]  # (kind, value)


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for check in string.digits:
        candidate = body + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


_CARD_SHAPES = (("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
                ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14),
                ("300", 14), ("4", 19))  # fmt: skip


def card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_SHAPES)
    digits = luhn_complete(prefix, length, rng)
    style = rng.randrange(3)
    if style == 0 or length not in (15, 16):
        return digits
    sep = " " if style == 1 else "-"
    if length == 15:
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LENGTHS))
    length = IBAN_LENGTHS[country]
    bban = "".join(
        rng.choice(string.digits + string.ascii_uppercase[:6]) for _ in range(length - 4)
    )
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    check = 98 - int(numeric) % 97
    value = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def email(rng: random.Random) -> str:
    user = rng.choice(
        ["john.doe", "a", "maria_garcia", "x+tag", "first.last99", "o'brien".replace("'", "")]
    )
    domain = rng.choice(["example.com", "mail.co.uk", "corp-internal.io", "gmail.com", "uni.edu"])
    return f"{user}{rng.randrange(100)}@{domain}"


def phone(rng: random.Random) -> str:
    def d(n: int) -> str:
        return "".join(rng.choice(string.digits) for _ in range(n))

    return rng.choice(
        [
            f"+1 {rng.randint(200, 999)} {rng.randint(200, 999)} {d(4)}",
            f"+1-{rng.randint(200, 999)}-{rng.randint(200, 999)}-{d(4)}",
            f"({rng.randint(200, 999)}) {rng.randint(200, 999)}-{d(4)}",
            f"{rng.randint(200, 999)}-{rng.randint(200, 999)}-{d(4)}",
            f"{rng.randint(200, 999)}.{rng.randint(200, 999)}.{d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            f"+49 30 {d(8)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+81-3-{d(4)}-{d(4)}",
        ]
    )


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randrange(256)) for _ in range(4))


def ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + ":".join(groups[6:])


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _alnum(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def api_key(rng: random.Random) -> str:
    return rng.choice(
        [
            "sk-proj-" + _alnum(rng, 48),
            "sk-" + _alnum(rng, 48),
            "sk-ant-api03-" + _alnum(rng, 93, string.ascii_letters + string.digits + "_-") + "AA",
            "AKIA" + _alnum(rng, 16, string.ascii_uppercase + string.digits),
            "ghp_" + _alnum(rng, 36),
            "github_pat_" + _alnum(rng, 82, string.ascii_letters + string.digits + "_"),
            "AIza" + _alnum(rng, 35, string.ascii_letters + string.digits + "_-"),
            "xoxb-" + f"{rng.randrange(10**12)}-{rng.randrange(10**12)}-" + _alnum(rng, 24),
            "sk_live_" + _alnum(rng, 24),
            "hf_" + _alnum(rng, 34),
            "glpat-" + _alnum(rng, 20),
        ]
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": str(rng.randrange(10**6)), "iat": rng.randrange(10**9, 2 * 10**9)}
    payload = _b64url(json.dumps(claims).encode())
    return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"


def private_key(rng: random.Random) -> str:
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", ""])
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(rng.randint(3, 8))]
    return (
        f"-----BEGIN {kind}PRIVATE KEY-----\n"
        + "\n".join(lines)
        + f"\n-----END {kind}PRIVATE KEY-----"
    )


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "credit_card": card,
    "iban": iban,
    "email": email,
    "phone": phone,
    "ip_address": ipv4,
    "ipv6": ipv6,
    "ssn": ssn,
    "api_key": api_key,
    "jwt": jwt,
    "private_key": private_key,
}

_FRAMES = (
    "Please charge {} for the order.",
    "my details: {}",
    "{}",
    "Contact: {}, thanks!",
    "Here it is ({}) — can you check it?",
    "Line one\n{}\nline three",
    "value='{}'",
)


def positives(n_each: int, seed: int = 13) -> list[tuple[str, str, str]]:
    """(kind, value, text with the value in a sentence) for every generator."""
    rng = random.Random(seed)
    out = []
    for name, make in GENERATORS.items():
        kind = "ip_address" if name == "ipv6" else name
        for _ in range(n_each):
            value = make(rng)
            out.append((kind, value, rng.choice(_FRAMES).format(value)))
    return out


_CODE = (
    "def handler(request):\n    return {'status': 200, 'items': list(range(10))}\n",
    "for (int i = 0; i < 1024; i++) { buf[i] = (uint8_t)(i * 31 % 255); }",
    "std::vector<int> v{1, 2, 3}; auto it = std::find(v.begin(), v.end(), 2);",
    "SELECT id, created_at FROM orders WHERE total > 100.50 AND status = 'paid' LIMIT 20;",
    "@dataclass(frozen=True)\nclass Point:\n    x: float = 0.0\n    y: float = 0.0",
    "const port = process.env.PORT || 8080; app.listen(port, () => console.log('up'));",
    "x = a[::2] + b[1::3]; y = np.arange(0, 1, 0.001)",
    "npm install @types/node@20.11.5 react@18.2.0 --save-dev",
    "git clone https://github.com/example/project.git && cd project && make -j4",
    "pip install 'numpy>=1.26.4' torch==2.3.1+cu121",
    "ERROR 2024-03-01T12:34:56.789Z worker-3 job 48213 failed after 3 retries (code 137)",
    "time.sleep(0.25); deadline = time.monotonic() + 30.0",
    "matrix = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]",
    "The function returns 3.141592653589793 when called with n = 1000000.",
    "version 1.2.3, build 20240301, released 2024-03-01",
    "colors: #ff00aa #00ff00 rgba(255, 0, 128, 0.5)",
    "curl -s http://localhost:8080/v1/models | jq '.data[].id'",
    "Total: 1,234,567.89 USD across 12 invoices (avg 102,880.66).",
    "chmod 0755 /usr/local/bin/tool && ls -la /var/log/nginx/",
    "The meeting is at 10:30 on 2024-05-17; room 4-112, floor 3.",
)


def negatives(n: int, seed: int = 31) -> list[str]:
    """Texts that look technical, numeric or random but carry no PII."""
    rng = random.Random(seed)
    makers: list[Callable[[], str]] = [
        lambda: rng.choice(_CODE),
        lambda: str(uuid.UUID(int=rng.getrandbits(128))),
        lambda: f"request {uuid.UUID(int=rng.getrandbits(128))} took {rng.randint(1, 999)} ms",
        lambda: hashlib.md5(rng.randbytes(8)).hexdigest(),
        lambda: hashlib.sha1(rng.randbytes(8)).hexdigest(),
        lambda: f"sha256:{hashlib.sha256(rng.randbytes(8)).hexdigest()}",
        lambda: f"commit {hashlib.sha1(rng.randbytes(8)).hexdigest()[:7]} on main",
        lambda: f"{rng.randint(1_600_000_000, 1_800_000_000)}",
        lambda: f"ts={rng.randint(1_600_000_000_000, 1_800_000_000_000)}",
        lambda: (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
        ),
        lambda: f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        lambda: f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        lambda: f"{rng.random() * 1000:.6f}",
        lambda: f"order #{rng.randint(10_000, 99_999_999)}",
        lambda: base64.b64encode(rng.randbytes(rng.randint(8, 48))).decode(),
        lambda: f"/home/user/projects/{_alnum(rng, 8)}/src/main.py:{rng.randint(1, 999)}",
        lambda: f"{rng.randint(1, 99)} + {rng.randint(1, 99)} = ?",
        lambda: (
            f"price {rng.randint(1, 999)}.{rng.randint(0, 99):02d} EUR, qty {rng.randint(1, 50)}"
        ),
        lambda: f"MAC {':'.join(f'{rng.randrange(256):02x}' for _ in range(6))}",
        lambda: f"port {rng.randint(1024, 65535)}, pid {rng.randint(100, 99999)}",
        lambda: (
            f"isbn 978-{rng.randint(0, 9)}-{rng.randint(100, 999)}-"
            f"{rng.randint(10000, 99999)}-{rng.randint(0, 9)}"
        ),
        lambda: f"lat {rng.uniform(-90, 90):.6f}, lon {rng.uniform(-180, 180):.6f}",
    ]
    return [rng.choice(makers)() for _ in range(n)]
