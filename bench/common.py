"""What the benchmarks share: logging to stderr, the machine they ran on, and the word and
name generators behind their realistic label values."""

from __future__ import annotations

import json
import os
import platform
import random
import re
import socket
import string
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def log(text: str) -> None:
    """Progress, on stderr: stdout carries the table."""
    print(text, file=sys.stderr, flush=True)


# No proxy for loopback servers, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> bytes:
    """The body of a GET (no proxies); an HTTP error status raises ``urllib.error.HTTPError``."""
    request = urllib.request.Request(url, headers=headers or {})
    with _OPENER.open(request, timeout=timeout) as r:
        body: bytes = r.read()
    return body


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of ``/proc/PID/status`` (VmHWM, VmRSS, ...), in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        m = re.match(r"(Vm\w+|Rss\w+):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def sample_values(exposition: str, name: str) -> dict[str, float]:
    """Every sample ``name`` of a text exposition: its label text (``{...}`` or "") -> value.
    A plain scan, for the exporter's few self-metrics, without parsing the whole body."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^\n]*\}})? (\S+)$", re.M)
    return {m.group(1) or "": float(m.group(2)) for m in pattern.finditer(exposition)}


def names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))


def username(rng: random.Random) -> str:
    """FAS-like: 3-14 lowercase letters, sometimes digits (pbrezina, ngompa, kevin, limb42)."""
    name = word(rng, rng.randint(1, 5))
    if rng.random() < 0.5:
        name = rng.choice(string.ascii_lowercase) + name
    if rng.random() < 0.1:
        name += str(rng.randint(1, 99))
    return name


PACKAGE_PREFIXES = (
    ("",) * 10
    + ("python-",) * 3
    + ("rust-", "golang-github-") * 2
    + names("perl- rubygem- nodejs- ghc- texlive- R- php- mingw-")
)


def package(rng: random.Random) -> str:
    """Source package names, 4-45 characters (kernel, python-requests, rust-tokio-util, ...)."""
    prefix = rng.choice(PACKAGE_PREFIXES)
    parts = rng.randint(1, 3)
    if prefix == "golang-github-":
        parts = rng.randint(2, 3)
    words = [word(rng, rng.randint(1, 4)) for _ in range(parts)]
    if prefix in ("perl-", "R-"):
        words = [w.capitalize() for w in words]
    return prefix + "-".join(words)


def machine(**versions: str) -> dict[str, Any]:
    """The machine and software a run was measured on (extra versions as keywords)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model or platform.processor() or "unknown",
        "ram_mb": ram_mb(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        **versions,
        "loadavg": loadavg(),
    }


def ram_mb() -> int | None:
    """The machine's memory (MemTotal), in MiB; None where /proc/meminfo is unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def loadavg() -> str:
    """The 1-minute load average: other work on the machine skews the figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


#: Fedora bus categories, for realistic label values.
CATEGORIES = names(
    "ansible anitya autocloud badges bodhi buildsys bugzilla ci compose copr coreos datanommer "
    "discourse distgit elections fas fedbadges fedimg fedocal fmn git github greenwave hotness "
    "hubs infragit irc kerneltest koji mailman mdapi meetbot mirrormanager module noggin "
    "notifications nuancier odcs openqa osbuild packit pagure pdc planet pungi releng resultsdb "
    "robosignatory sigul summershum taskotron toddlers trac waiverdb wiki zanata fedora_planet "
    "message_tagging image_uploader"
)


def publish(report: dict[str, Any], text: str, json_path: Path | None) -> None:
    """The benchmark's markdown on stdout, kept in its report, and the report as JSON at
    ``json_path`` (``--json``), which ``report.py`` reads."""
    report["markdown"] = text
    sys.stdout.write(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
