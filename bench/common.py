"""What the benchmarks share: logging to stderr, the machine they ran on, and the word and
name generators behind their realistic label values."""

from __future__ import annotations

import os
import platform
import random
import string
import sys
from pathlib import Path
from typing import Any

CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def log(text: str) -> None:
    """Progress, on stderr: stdout carries the table."""
    print(text, file=sys.stderr, flush=True)


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
