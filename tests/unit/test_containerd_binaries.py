"""The runtime merge checked by real containerd binaries: 1.6 (Debian 12), 1.7 (Debian 13), 2.x (sid).

Every result is loaded by the containerd it was planned for with
`containerd --config F config dump`, which prints the effective, merged config (imports
resolved by containerd itself) and fails on a config containerd cannot load. In it:
runtime `nvidia` exists, runs the NVIDIA runtime through the runc v2 shim, and has runc's
cgroup driver; and apart from that runtime (and `imports`), the effective config is the one
containerd had before.

The second half proves, with the same binaries, what gpunode's merge rests on: what each
containerd does with an imported file.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from standins.containerd_binaries import containerd_bins  # noqa: F401  (fixture)

from gpunode.bootstrap.core.containerd.plan import (
    RuntimeSettings,
    UnsupportedSchemaError,
    default_runtime_name,
    effective_runtime,
    parse_containerd_version,
    plan_runtime_merge,
    runtime_problems,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

NVIDIA = "/usr/bin/nvidia-container-runtime"
CRI = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}

# Debian 12's own /etc/containerd/config.toml, as the package ships it.
DEBIAN_DEFAULT = (REPO_ROOT / "tests/data/containerd/debian-12-config.toml").read_text()

# Written by hand, the way people do: comments, flat headers out of order, dotted keys, an
# inline table, another runtime, and an old nvidia runtime with the wrong binary and the
# wrong cgroup driver.
HAND_WRITTEN = """\
# Cluster node config -- managed by hand, keep the comments!
version = {schema}
oom_score = -999

[plugins."{cri}".containerd.runtimes.runc.options]
  SystemdCgroup = true   # kubelet uses the systemd cgroup driver
  Root = "/run/containerd/runc"

[plugins."{cri}".containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"
  options = {{ BinaryName = "/usr/bin/crun", SystemdCgroup = true }}

[plugins."{cri}".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  privileged_without_host_devices = true  # set on purpose
  options.BinaryName = "/usr/local/bin/nvidia-container-runtime-old"

[plugins."{cri}"]
  enable_selinux = false
  max_container_log_line_size = 65536

[plugins."{cri}".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.internal.v1.opt"]
  path = "/opt/containerd"
"""


def dump(binary: Path, config: Path) -> str:
    result = subprocess.run(
        [str(binary), "--config", str(config), "config", "dump"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"containerd {binary} refused {config}:\n{result.stderr}\n{config.read_text()}"
    return result.stdout


def schema_of(version: str) -> int:
    return 2 if version.startswith("1.") else 3


def config_default_systemd(binary: Path) -> str:
    """`containerd config default` of this very binary, switched to the systemd cgroup driver (kubeadm's way)."""
    text = subprocess.run([str(binary), "config", "default"], capture_output=True, text=True, check=True).stdout
    for old in ("SystemdCgroup = false", "SystemdCgroup = False"):
        text = text.replace(old, "SystemdCgroup = true")
    assert "SystemdCgroup = true" in text
    return text


def comparable(dump_text: str, *, set_default: bool, zero_options_are_absent: bool) -> dict[str, Any]:
    """An effective config with what the merge may change taken out.

    Out: `imports`, the nvidia runtime, default_runtime_name when asked to set it. And where
    containerd 1.x needs runc written explicitly (zero_options_are_absent), its dump shows an
    option gpunode leaves out as absent and the built-in one as its zero value; the runc
    shim reads both the same, so zero values are dropped before comparing.
    """
    data = tomllib.loads(dump_text)
    data.pop("imports", None)
    schema = data["version"]
    containerd = data["plugins"][CRI[schema]]["containerd"]
    containerd["runtimes"].pop("nvidia", None)
    if set_default:
        containerd.pop("default_runtime_name")
    if zero_options_are_absent:
        for runtime in containerd["runtimes"].values():
            options = runtime.get("options") or {}
            runtime["options"] = {k: v for k, v in options.items() if v not in ("", 0, False)}
    return data


def write_plan(tmp_path: Path, plan_files: Any) -> None:
    for change in plan_files:
        path = Path(change.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(change.new_text)


CASES = ["no-file", "debian-default", "config-default-systemd", "hand-written"]


def case_text(case: str, version: str, binary: Path) -> str | None:
    schema = schema_of(version)
    if case == "no-file":
        return None
    if case == "debian-default":
        return DEBIAN_DEFAULT  # schema 2; on containerd 2.x, a node upgraded from 1.x
    if case == "config-default-systemd":
        return config_default_systemd(binary)
    return HAND_WRITTEN.format(schema=schema, cri=CRI[schema])


# Every case in both modes; the default-runtime variant on the two richest configs.
COMBINATIONS = [(case, in_place, False) for case in CASES for in_place in (False, True)] + [
    (case, in_place, True) for case in ("config-default-systemd", "hand-written") for in_place in (False, True)
]


@pytest.mark.parametrize(
    ("case", "in_place", "set_default"),
    COMBINATIONS,
    ids=[f"{c}-{'in-place' if i else 'drop-in'}{'-default' if d else ''}" for c, i, d in COMBINATIONS],
)
def test_every_result_loads_and_gives_the_nvidia_runtime_and_nothing_else(
    containerd_bins: dict[str, Path], tmp_path: Path, case: str, in_place: bool, set_default: bool
) -> None:
    for version, binary in containerd_bins.items():
        root = tmp_path / version
        config = root / "etc/containerd/config.toml"
        settings = RuntimeSettings(
            in_place=in_place,
            set_default_runtime=set_default,
            dropin_path=str(root / "etc/containerd/conf.d/99-nvidia.toml"),
        )
        original = case_text(case, version, binary)
        before_file = root / "before.toml"
        before_file.parent.mkdir(parents=True)
        # No file at all means containerd's built-in defaults: the same as a bare version line.
        before_file.write_text(original if original is not None else f"version = {schema_of(version)}\n")
        before = dump(binary, before_file)
        if original is not None:
            config.parent.mkdir(parents=True)
            config.write_text(original)

        plan = plan_runtime_merge(original, containerd_version=version, settings=settings, config_path=str(config))
        write_plan(root, plan.files)
        after = dump(binary, config)

        # The runtime containerd will really use.
        assert runtime_problems(after, runtime_name="nvidia", binary_name=NVIDIA) == (), (version, after)
        runtime = effective_runtime(after, "nvidia")
        assert runtime is not None
        assert runtime["runtime_type"] == "io.containerd.runc.v2"
        options = runtime["options"]
        assert isinstance(options, dict) and options["BinaryName"] == NVIDIA
        runc = effective_runtime(before, "runc")
        assert runc is not None and isinstance(runc["options"], dict)
        assert options.get("SystemdCgroup", False) == runc["options"].get("SystemdCgroup", False)
        if case == "config-default-systemd":
            assert options["SystemdCgroup"] is True  # a systemd-cgroup node stays one
        assert default_runtime_name(after) == ("nvidia" if set_default else "runc")
        # Nothing else changed.
        one = version.startswith("1.")
        assert comparable(after, set_default=set_default, zero_options_are_absent=one) == comparable(
            before, set_default=set_default, zero_options_are_absent=one
        ), version
        # Drop-in mode: the main file only gained its imports entry.
        if not in_place and original is not None:
            assert tomllib.loads(config.read_text()) == {
                **tomllib.loads(original),
                "imports": [settings.dropin_path],
            }
        # Run again on what it wrote: nothing to change.
        again = plan_runtime_merge(
            config.read_text(),
            containerd_version=version,
            settings=settings,
            config_path=str(config),
            dropin_text=Path(settings.dropin_path).read_text() if Path(settings.dropin_path).exists() else None,
        )
        assert not again.changed, again.diff


def test_hand_written_config_keeps_its_comments_and_gets_its_runtime_corrected(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    for version, binary in containerd_bins.items():
        schema = schema_of(version)
        text = HAND_WRITTEN.format(schema=schema, cri=CRI[schema])
        config = tmp_path / version / "config.toml"
        config.parent.mkdir()
        plan = plan_runtime_merge(
            text, containerd_version=version, settings=RuntimeSettings(in_place=True), config_path=str(config)
        )
        new = plan.files[0].new_text
        for line in text.splitlines():
            if "#" in line:
                assert line.strip() in new
        assert new.count(".runtimes.nvidia]") == 1  # corrected, not duplicated
        assert "nvidia-container-runtime-old" not in new
        config.write_text(new)
        runtime = effective_runtime(dump(binary, config), "nvidia")
        assert runtime is not None and isinstance(runtime["options"], dict)
        assert runtime["options"]["BinaryName"] == NVIDIA
        assert runtime["options"]["SystemdCgroup"] is True
        assert runtime["options"]["Root"] == "/run/containerd/runc"  # inherited from runc
        assert runtime["privileged_without_host_devices"] is True  # the user's own setting stays
        assert any("corrected" in note for note in plan.notes)


def test_version_strings_of_the_real_binaries_parse(containerd_bins: dict[str, Path]) -> None:
    for version, binary in containerd_bins.items():
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
        assert ".".join(map(str, parse_containerd_version(out))) == version


# -- what containerd does with imports (the facts the merge is built on) ---------------------


NAIVE_DROPIN = """\
version = {schema}
[plugins."{cri}".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  [plugins."{cri}".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/bin/nvidia-container-runtime"
"""

MAIN_WITH_SETTINGS = """\
version = {schema}
imports = ["{dropin}"]
[plugins."{cri}"]
  max_container_log_line_size = 12345
[plugins."{cri}".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."{cri}".containerd.runtimes.runc.options]
    SystemdCgroup = true
"""


def _naive_setup(tmp_path: Path, main_schema: int, dropin_schema: int) -> Path:
    dropin = tmp_path / "conf.d" / "naive.toml"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(NAIVE_DROPIN.format(schema=dropin_schema, cri=CRI[dropin_schema]))
    main = tmp_path / "config.toml"
    main.write_text(MAIN_WITH_SETTINGS.format(schema=main_schema, cri=CRI[main_schema], dropin=dropin))
    return main


def _cri(dump_text: str) -> dict[str, Any]:
    data = tomllib.loads(dump_text)
    return copy.deepcopy(data["plugins"][CRI[data["version"]]])


def test_containerd_1x_replaces_the_whole_cri_table_from_an_import(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    """Why a 1.x drop-in must carry the whole CRI table: a bare one wipes runc and every setting."""
    for version, binary in containerd_bins.items():
        if not version.startswith("1."):
            continue
        effective = dump(binary, _naive_setup(tmp_path / version, 2, 2))
        cri = _cri(effective)
        assert set(cri["containerd"]["runtimes"]) == {"nvidia"}  # runc is gone: pods have no runtime
        assert cri["max_container_log_line_size"] == 16384  # the main file's 12345 is gone
        assert default_runtime_name(effective) == "runc"


def test_containerd_2x_merges_an_import_key_by_key(containerd_bins: dict[str, Path], tmp_path: Path) -> None:
    for version, binary in containerd_bins.items():
        if version.startswith("1."):
            continue
        for schema in (2, 3):  # a 2.x node may still run a schema 2 file
            cri = _cri(dump(binary, _naive_setup(tmp_path / f"{version}-{schema}", schema, schema)))
            assert cri["max_container_log_line_size"] == 12345
            assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
            assert cri["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == NVIDIA


def test_containerd_2x_needs_the_dropin_in_the_main_files_schema(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    """A schema 3 drop-in over a schema 2 file drops the file's CRI settings; 2 over 3 is ignored."""
    for version, binary in containerd_bins.items():
        if version.startswith("1."):
            continue
        cri = _cri(dump(binary, _naive_setup(tmp_path / f"{version}-2-3", 2, 3)))
        assert cri["max_container_log_line_size"] == 16384
        assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
        cri = _cri(dump(binary, _naive_setup(tmp_path / f"{version}-3-2", 3, 2)))
        assert "nvidia" not in cri["containerd"]["runtimes"]


def test_containerd_2x_reads_no_dropin_directory_by_itself(containerd_bins: dict[str, Path], tmp_path: Path) -> None:
    for version, binary in containerd_bins.items():
        if version.startswith("1."):
            continue
        etc = tmp_path / version
        (etc / "conf.d").mkdir(parents=True)
        (etc / "conf.d" / "99-nvidia.toml").write_text(NAIVE_DROPIN.format(schema=3, cri=CRI[3]))
        (etc / "config.toml").write_text("version = 3\n")
        assert effective_runtime(dump(binary, etc / "config.toml"), "nvidia") is None
        default = subprocess.run([str(binary), "config", "default"], capture_output=True, text=True, check=True).stdout
        assert tomllib.loads(default)["imports"] == []


def test_relative_imports_resolve_against_the_main_files_directory(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    """Plain relative imports do everywhere; relative globs do from 1.7 on (1.6 uses its cwd)."""
    for version, binary in containerd_bins.items():
        schema = schema_of(version)
        etc = tmp_path / version
        (etc / "conf.d").mkdir(parents=True)
        dropin = etc / "conf.d" / "99-nvidia.toml"
        dropin.write_text(NAIVE_DROPIN.format(schema=schema, cri=CRI[schema]))
        (etc / "config.toml").write_text(f'version = {schema}\nimports = ["conf.d/99-nvidia.toml"]\n')
        assert effective_runtime(dump(binary, etc / "config.toml"), "nvidia") is not None
        (etc / "config.toml").write_text(f'version = {schema}\nimports = ["conf.d/*.toml"]\n')
        glob_works = effective_runtime(dump(binary, etc / "config.toml"), "nvidia") is not None
        assert glob_works == (not version.startswith("1.6."))
        # gpunode adds its own entry exactly where containerd would not find the drop-in.
        plan = plan_runtime_merge(
            (etc / "config.toml").read_text(),
            containerd_version=version,
            settings=RuntimeSettings(dropin_path=str(dropin)),
            config_path=str(etc / "config.toml"),
        )
        assert plan.files[0].changed == (not glob_works)
        write_plan(etc, plan.files)
        assert runtime_problems(dump(binary, etc / "config.toml"), binary_name=NVIDIA) == ()


def test_schemas_a_containerd_cannot_read_are_refused_like_containerd_refuses_them(
    containerd_bins: dict[str, Path], tmp_path: Path
) -> None:
    for version, binary in containerd_bins.items():
        # sid may move past 2.2; from 2.3 on containerd reads schema 4 and refuses 5.
        too_new = 3 if version.startswith("1.") else 4 if parse_containerd_version(version) < (2, 3, 0) else 5
        config = tmp_path / f"{version}.toml"
        config.write_text(f"version = {too_new}\n")
        refused = subprocess.run(
            [str(binary), "--config", str(config), "config", "dump"], capture_output=True, text=True, check=False
        )
        if version.startswith("1.6"):
            # 1.6 loads it but reads no CRI settings from the schema 3 tables: silently wrong.
            assert refused.returncode == 0
        else:
            assert refused.returncode != 0 and "version" in refused.stderr
        with pytest.raises(UnsupportedSchemaError, match=f"version = {too_new}"):
            plan_runtime_merge(config.read_text(), containerd_version=version, settings=RuntimeSettings())
