"""A private apt root: real apt, its own sources, lists, preferences and an empty dpkg
status, so that tests can ask Debian's real archive what a plan installs without touching
this machine's apt configuration."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


class PrivateApt:
    def __init__(self, root: Path, sources: dict[str, str], arch: str = "amd64") -> None:
        self.root = root
        for sub in (
            "etc/apt/sources.list.d",
            "etc/apt/preferences.d",
            "etc/apt/apt.conf.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for stale in (root / "etc/apt/sources.list.d").iterdir():
            stale.unlink()
        for name, text in sources.items():
            (root / "etc/apt/sources.list.d" / name).write_text(text)
        (root / "var/lib/dpkg/status").write_text("")
        config = "\n".join(
            [
                f'Dir "{root}/";',
                f'Dir::State "{root}/var/lib/apt/";',
                f'Dir::State::status "{root}/var/lib/dpkg/status";',
                f'Dir::Cache "{root}/var/cache/apt/";',
                f'Dir::Etc "{root}/etc/apt/";',
                'Dir::Etc::Trusted "/etc/apt/trusted.gpg";',
                'Dir::Etc::TrustedParts "/etc/apt/trusted.gpg.d/";',
                f'APT::Architecture "{arch}";',
                f'APT::Architectures {{ "{arch}"; }};',
                'Acquire::Languages "none";',
                "",
            ]
        )
        self.config = root / "apt.conf"
        self.config.write_text(config)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "APT_CONFIG": str(self.config), "LC_ALL": "C"}
        return subprocess.run(list(args), env=env, capture_output=True, text=True, check=check)

    def update(self) -> None:
        result = self.run("apt-get", "-q", "update", check=False)
        if result.returncode != 0 or "\nE:" in "\n" + result.stderr:
            raise RuntimeError(f"apt-get update failed:\n{result.stdout}\n{result.stderr}")

    def set_preferences(self, name: str, text: str | None) -> None:
        path = self.root / "etc/apt/preferences.d" / name
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)

    def simulate_install(self, args: list[str]) -> dict[str, str]:
        """name -> version apt would install, for `apt-get install --no-install-recommends`."""
        result = self.run("apt-get", "-s", "install", "--no-install-recommends", *args, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get -s install {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        plan: dict[str, str] = {}
        for line in result.stdout.splitlines():
            match = re.match(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ", line)
            if match:
                plan[match.group(1)] = match.group(2)
        return plan

    def show(self, names: list[str]) -> str:
        return self.run("apt-cache", "show", *names).stdout
