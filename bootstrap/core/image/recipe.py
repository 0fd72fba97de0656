"""What goes into the plugin image: a Debian base from mmdebstrap, and the plugin's packages.

The base is Debian's own python3 (no registry, no python.org build): `essential` (dpkg,
coreutils, libc; no apt) plus python3, libstdc++6 (for grpcio) and python-is-python3, so
that the image keeps the Containerfile's ENTRYPOINT `python -m gpunode.plugin`. Documentation, manual pages and
translations are left out. The recipe is hashed into the key the built base is cached by:
change the recipe and a new base is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bump when the way a base is produced changes in a way the recipe does not show.
_FORMAT = 1

# Debian's architecture names and the matching wheel platform suffix and OCI architecture.
ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class BaseRecipe:
    suite: str = "bookworm"
    python_version: str = "3.11"  # Debian 12's python3; pip installs wheels for this one
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    architecture: str = "amd64"
    variant: str = "essential"
    # libstdc++6: grpcio's C core is C++ (the manylinux wheel links the system's libstdc++).
    packages: tuple[str, ...] = ("python3", "python-is-python3", "libstdc++6")
    # /usr merged by mmdebstrap's own hook, not by the usrmerge package, which would pull
    # in the whole of perl (40 MB) for a one-time conversion.
    hook_dirs: tuple[str, ...] = ("/usr/share/mmdebstrap/hooks/merged-usr",)
    dpkg_options: tuple[str, ...] = (
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
    )

    def key(self) -> str:
        text = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def mmdebstrap_argv(self, output: str) -> list[str]:
        """Build the base as an uncompressed tarball at `output` (mmdebstrap picks its mode:
        root when run as root, else an unprivileged user namespace)."""
        argv = [
            "mmdebstrap",
            f"--variant={self.variant}",
            f"--architectures={self.architecture}",
            f"--include={','.join(self.packages)}",
            "--format=tar",
        ]
        argv += [f"--hook-dir={hook}" for hook in self.hook_dirs]
        argv += [f"--dpkgopt={option}" for option in self.dpkg_options]
        argv += [
            self.suite,
            output,
            f"deb {self.mirror} {self.suite} main",
            f"deb {self.mirror} {self.suite}-updates main",
            f"deb {self.security_mirror} {self.suite}-security main",
        ]
        return argv

    @property
    def site_packages(self) -> str:
        """Where the plugin's packages go: Debian's python3 reads /usr/local first."""
        return f"usr/local/lib/python{self.python_version}/dist-packages"

    def wheel_platforms(self) -> list[str]:
        """manylinux tags a bookworm glibc (2.36) runs, newest first, for pip --platform."""
        machine = ARCHITECTURES[self.architecture]
        return [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)] + [f"manylinux2014_{machine}"]


DEFAULT_BASE = BaseRecipe()
