"""The containerd runtime merge, case by case (pure functions, no binaries)."""

from __future__ import annotations

import sys

import pytest

from gpunode.bootstrap.core.containerd.plan import (
    ConfigStructureError,
    ContainerdConfigError,
    FileChange,
    InvalidRuntimeSettingsError,
    K3sManagedConfigError,
    RuntimeSettings,
    TomlSyntaxError,
    UnsupportedContainerdVersionError,
    UnsupportedSchemaError,
    config_schema_version,
    default_runtime_name,
    dump_schema,
    effective_runtime,
    parse_containerd_version,
    plan_runtime_merge,
    runtime_problems,
)
from gpunode.bootstrap.errors import HostStateError, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

V2 = "io.containerd.grpc.v1.cri"
V3 = "io.containerd.cri.v1.runtime"
NVIDIA = "/usr/bin/nvidia-container-runtime"


def runtimes_in(text: str, schema: int = 2) -> dict[str, dict[str, object]]:
    data = tomllib.loads(text)
    result: dict[str, dict[str, object]] = data["plugins"][V2 if schema == 2 else V3]["containerd"]["runtimes"]
    return result


# -- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", (1, 6, 20)),
        ("containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", (1, 7, 27)),
        ("containerd github.com/containerd/containerd/v2 2.1.9+unknown ", (2, 1, 9)),
        ("containerd github.com/containerd/containerd v1.7.2 0cae528dd6cb557f7201036e9f43420650207b58", (1, 7, 2)),
        ("containerd github.com/k3s-io/containerd v1.7.23-k3s2\n", (1, 7, 23)),
        ("2.1", (2, 1, 0)),
        ("v2.0.0-rc.1", (2, 0, 0)),
        ("1.7.24~ds1-6+deb13u1", (1, 7, 24)),
    ],
)
def test_containerd_version_strings(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_containerd_version(text) == expected


@pytest.mark.parametrize("text", ["", "containerd", "latest", "containerd github.com/containerd/containerd"])
def test_unreadable_version_strings_are_user_errors(text: str) -> None:
    with pytest.raises(UnsupportedContainerdVersionError) as caught:
        parse_containerd_version(text)
    assert caught.value.exit_code == 2 and "containerd --version" in str(caught.value)


def test_containerd_releases_gpunode_does_not_know_are_refused() -> None:
    for version in ("1.2.13", "3.0.0", "0.2"):
        with pytest.raises(UnsupportedContainerdVersionError):
            plan_runtime_merge(None, containerd_version=version, settings=RuntimeSettings())


# -- schemas and bad input ------------------------------------------------------------------


def test_bad_toml_names_file_line_and_column() -> None:
    text = 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd\n'
    with pytest.raises(TomlSyntaxError) as caught:
        plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings(), config_path="/etc/x.toml")
    error = caught.value
    assert (error.path, error.line) == ("/etc/x.toml", 3) and error.column is not None
    assert isinstance(error, UserError) and error.exit_code == 2
    assert "/etc/x.toml" in str(error) and "line 3, column" in str(error)


def test_a_duplicate_table_is_bad_toml_too() -> None:
    # tomlkit would take this; containerd would not. The strict parser decides.
    text = "version = 2\n[a]\nx = 1\n[a]\ny = 2\n"
    with pytest.raises(TomlSyntaxError, match="line 4"):
        plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings())


def test_bad_toml_in_the_existing_dropin_names_the_dropin() -> None:
    with pytest.raises(TomlSyntaxError) as caught:
        plan_runtime_merge("version = 2\n", containerd_version="1.7", settings=RuntimeSettings(), dropin_text="x = \n")
    assert caught.value.path == RuntimeSettings().dropin_path


@pytest.mark.parametrize(
    ("text", "version", "match"),
    [
        ('oom_score = 0\n[plugins.cri]\nsandbox_image = "x"\n', "1.7", "no `version` key"),
        ("version = 1\n[plugins.cri]\n", "1.6", "version = 1"),
        ("version = 1\n[plugins.cri]\n", "2.1", "containerd config migrate"),
        ("version = 5\n", "2.1", "does not know"),
        ("version = 0\n", "2.1", "does not know"),
        ("version = 3\n", "1.6.20", "up to 2"),
        ("version = 4\n", "2.1", "up to 3"),
        ("version = 4\n", "2.2.1", "up to 3"),
        ("version = true\n", "2.1", "whole number"),
    ],
)
def test_schemas_that_would_need_a_guess_are_refused_with_what_to_do(text: str, version: str, match: str) -> None:
    with pytest.raises(UnsupportedSchemaError, match=match) as caught:
        plan_runtime_merge(text, containerd_version=version, settings=RuntimeSettings())
    assert caught.value.fix


def test_schema_4_is_written_like_3() -> None:
    plan = plan_runtime_merge("version = 4\n", containerd_version="2.3.0", settings=RuntimeSettings(in_place=True))
    assert plan.schema_version == 4
    assert runtimes_in(plan.files[0].new_text, 4)["nvidia"]["options"] == {"BinaryName": NVIDIA, "SystemdCgroup": False}


def test_config_schema_version() -> None:
    assert config_schema_version(None) is None
    assert config_schema_version("# only a comment\n") is None
    assert config_schema_version("oom_score = 1\n") == 1
    assert config_schema_version("version = 3\n") == 3


def test_shapes_containerd_would_reject_are_refused() -> None:
    for text in (
        'version = 2\nimports = "/etc/containerd/conf.d/x.toml"\n',
        f'version = 2\n[plugins."{V2}".containerd]\nruntimes = "nvidia"\n',
        f'version = 2\n[plugins."{V2}".containerd.runtimes]\nnvidia = 1\n',
    ):
        with pytest.raises(ConfigStructureError):
            plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings())


@pytest.mark.parametrize(
    "settings",
    [
        RuntimeSettings(runtime_name="NVIDIA"),
        RuntimeSettings(runtime_name="nvidia.gpu"),
        RuntimeSettings(runtime_name="runc"),
        RuntimeSettings(binary_name="nvidia-container-runtime"),
        RuntimeSettings(binary_name="/usr/bin/x\n[evil]"),
        RuntimeSettings(dropin_path="conf.d/99-nvidia.toml"),
        RuntimeSettings(dropin_path="/etc/containerd/config.toml"),
    ],
)
def test_settings_that_would_write_a_broken_config_are_refused(settings: RuntimeSettings) -> None:
    with pytest.raises(InvalidRuntimeSettingsError):
        plan_runtime_merge("version = 2\n", containerd_version="1.7", settings=settings)


# -- the runtime ----------------------------------------------------------------------------


SYSTEMD_16 = f"""\
version = 2
# keep: top comment
[plugins."{V2}".containerd]
  snapshotter = "overlayfs"  # keep: trailing comment
  [plugins."{V2}".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."{V2}".containerd.runtimes.runc.options]
      SystemdCgroup = true
      BinaryName = "/usr/sbin/runc"
"""


def test_in_place_adds_the_runtime_next_to_runc_inheriting_its_options() -> None:
    plan = plan_runtime_merge(SYSTEMD_16, containerd_version="1.6.20", settings=RuntimeSettings(in_place=True))
    (change,) = plan.files
    assert change.changed and change.old_text == SYSTEMD_16
    new = change.new_text
    assert new.startswith(SYSTEMD_16)  # everything kept, byte for byte, the runtime after runc
    nvidia = runtimes_in(new)["nvidia"]
    assert nvidia == {
        "runtime_type": "io.containerd.runc.v2",
        "options": {"BinaryName": NVIDIA, "SystemdCgroup": True},
    }
    assert '\n  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n' in new  # indented like runc
    assert "default_runtime_name" not in new
    assert any("SystemdCgroup = true" in note for note in plan.notes)


def test_a_wrong_binary_is_corrected_not_duplicated() -> None:
    text = SYSTEMD_16 + (
        f'  [plugins."{V2}".containerd.runtimes.nvidia]\n'
        '    runtime_type = "io.containerd.runc.v2"\n'
        "    privileged_without_host_devices = true  # mine\n"
        f'    [plugins."{V2}".containerd.runtimes.nvidia.options]\n'
        '      BinaryName = "/usr/local/nvidia/toolkit/nvidia-container-runtime"\n'
        "      SystemdCgroup = false\n"
    )
    plan = plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings(in_place=True))
    new = plan.files[0].new_text
    assert new.count("runtimes.nvidia]") == 1 and new.count("runtimes.nvidia.options]") == 1
    nvidia = runtimes_in(new)["nvidia"]
    assert nvidia["options"] == {"BinaryName": NVIDIA, "SystemdCgroup": True}
    assert nvidia["privileged_without_host_devices"] is True and "# mine" in new
    assert any("corrected" in note for note in plan.notes)
    assert any("SystemdCgroup = false" in note for note in plan.notes)
    assert len(new.splitlines()) == len(text.splitlines())  # two values changed in place, nothing added


def test_a_result_fed_back_in_changes_nothing_byte_for_byte() -> None:
    for in_place in (False, True):
        settings = RuntimeSettings(in_place=in_place, set_default_runtime=True)
        first = plan_runtime_merge(SYSTEMD_16, containerd_version="1.7", settings=settings)
        second = plan_runtime_merge(
            first.files[0].new_text,
            containerd_version="1.7",
            settings=settings,
            dropin_text=None if in_place else first.files[1].new_text,
        )
        assert not second.changed and second.diff == ""
        assert [f.new_text for f in second.files] == [f.new_text for f in first.files]


def test_default_runtime_only_when_asked_and_then_a_note_why_it_is_not_enough() -> None:
    plain = plan_runtime_merge(SYSTEMD_16, containerd_version="1.7", settings=RuntimeSettings(in_place=True))
    assert "default_runtime_name" not in plain.files[0].new_text
    assert not any("F4" in note for note in plain.notes)
    asked = plan_runtime_merge(
        SYSTEMD_16, containerd_version="1.7", settings=RuntimeSettings(in_place=True, set_default_runtime=True)
    )
    data = tomllib.loads(asked.files[0].new_text)
    assert data["plugins"][V2]["containerd"]["default_runtime_name"] == "nvidia"
    (note,) = [n for n in asked.notes if "F4" in n]
    assert "no GPUs" in note and "runtimeClassName: nvidia" in note and "nvidia.com/gpu" in note


def test_a_default_runtime_set_before_is_left_and_explained() -> None:
    text = f'version = 3\n[plugins."{V3}".containerd]\n  default_runtime_name = "nvidia"\n'
    plan = plan_runtime_merge(text, containerd_version="2.1", settings=RuntimeSettings(in_place=True))
    assert tomllib.loads(plan.files[0].new_text)["plugins"][V3]["containerd"]["default_runtime_name"] == "nvidia"
    assert any("already the default runtime" in note and "F4" in note for note in plan.notes)


def test_no_config_file_gets_a_minimal_one() -> None:
    for version, schema in (("1.6.20", 2), ("2.1.9", 3)):
        plan = plan_runtime_merge(None, containerd_version=version, settings=RuntimeSettings())
        main, dropin = plan.files
        assert main.old_text is None and dropin.old_text is None
        assert tomllib.loads(main.new_text) == {"version": schema, "imports": [RuntimeSettings().dropin_path]}
        assert main.diff().startswith("--- /dev/null\n+++ /etc/containerd/config.toml\n")
        names = set(runtimes_in(dropin.new_text, schema))
        # 1.x loses its built-in runc once a runtime is named: it is written too.
        assert names == ({"runc", "nvidia"} if schema == 2 else {"nvidia"})


def test_a_file_with_only_comments_is_containerds_defaults_and_keeps_its_comments() -> None:
    text = "# containerd: defaults are fine here\n"
    plan = plan_runtime_merge(text, containerd_version="2.1", settings=RuntimeSettings(in_place=True))
    assert plan.files[0].new_text.startswith(text)
    assert tomllib.loads(plan.files[0].new_text)["version"] == 3


def test_runc_of_another_shim_is_not_inherited_from() -> None:
    text = f'version = 2\n[plugins."{V2}".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runsc.v1"\n'
    plan = plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings(in_place=True))
    assert runtimes_in(plan.files[0].new_text)["nvidia"]["options"] == {"BinaryName": NVIDIA, "SystemdCgroup": False}
    assert any("no runc-shim runtime" in note for note in plan.notes)


def test_a_custom_runtime_name_and_binary() -> None:
    settings = RuntimeSettings(
        runtime_name="nvidia-cdi", binary_name="/usr/bin/nvidia-container-runtime.cdi", in_place=True
    )
    plan = plan_runtime_merge("version = 3\n", containerd_version="2.1", settings=settings)
    runtime = runtimes_in(plan.files[0].new_text, 3)["nvidia-cdi"]
    assert runtime["options"] == {"BinaryName": "/usr/bin/nvidia-container-runtime.cdi", "SystemdCgroup": False}
    assert any('handler is "nvidia-cdi"' in note for note in plan.notes)


def test_values_are_written_as_toml_never_pasted() -> None:
    odd = '/opt/we"ird\\path/nvidia-container-runtime'
    plan = plan_runtime_merge(
        "version = 3\n", containerd_version="2.1", settings=RuntimeSettings(binary_name=odd, in_place=True)
    )
    assert runtimes_in(plan.files[0].new_text, 3)["nvidia"]["options"]["BinaryName"] == odd


# -- drop-in mode ---------------------------------------------------------------------------


def test_dropin_mode_touches_the_main_file_only_with_an_imports_entry() -> None:
    text = 'version = 3\n# registry mirrors below\nimports = [\n  "/etc/containerd/certs.toml",  # certs\n]\n'
    plan = plan_runtime_merge(text, containerd_version="2.1", settings=RuntimeSettings())
    main, dropin = plan.files
    assert tomllib.loads(main.new_text)["imports"] == ["/etc/containerd/certs.toml", RuntimeSettings().dropin_path]
    assert "# certs" in main.new_text and "# registry mirrors below" in main.new_text
    assert tomllib.loads(dropin.new_text)["version"] == 3
    assert dropin.new_text.startswith("# The containerd runtime for the NVIDIA container toolkit")


def test_an_imports_glob_that_covers_the_dropin_is_enough() -> None:
    for entry in ("/etc/containerd/conf.d/*.toml", "conf.d/*.toml", "/etc/containerd/conf.d/99-nvidia.toml"):
        text = f'version = 3\nimports = ["{entry}"]\n'
        plan = plan_runtime_merge(text, containerd_version="2.1", settings=RuntimeSettings())
        assert not plan.files[0].changed, entry
    # ... except where containerd 1.6 reads a relative glob from its working directory.
    plan = plan_runtime_merge(
        'version = 2\nimports = ["conf.d/*.toml"]\n', containerd_version="1.6.20", settings=RuntimeSettings()
    )
    assert plan.files[0].changed and any("working directory" in note for note in plan.notes)


def test_an_existing_2x_dropin_keeps_its_other_content_and_is_corrected() -> None:
    # What an older tool may have left at the same path.
    old = (
        "# written by hand\n"
        "version = 3\n"
        f'[plugins."{V3}".containerd.runtimes.nvidia]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        f'[plugins."{V3}".containerd.runtimes.nvidia.options]\n'
        '  BinaryName = "/usr/bin/nvidia-container-runtime-old"\n'
        '[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
    )
    plan = plan_runtime_merge("version = 3\n", containerd_version="2.1", settings=RuntimeSettings(), dropin_text=old)
    dropin = plan.files[1]
    assert dropin.old_text == old and "# written by hand" in dropin.new_text
    data = tomllib.loads(dropin.new_text)
    assert data["plugins"]["io.containerd.grpc.v1.cri"] == {"registry": {"config_path": "/etc/containerd/certs.d"}}
    assert data["plugins"][V3]["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == NVIDIA


def test_a_1x_dropin_is_rebuilt_from_the_main_file_and_says_what_it_drops() -> None:
    old = (
        "version = 2\n"
        f'[plugins."{V2}"]\n'
        '  sandbox_image = "registry.example/pause:3.9"\n'
        f'[plugins."{V2}".containerd.runtimes.nvidia]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
    )
    plan = plan_runtime_merge(SYSTEMD_16, containerd_version="1.7", settings=RuntimeSettings(), dropin_text=old)
    cri = tomllib.loads(plan.files[1].new_text)["plugins"][V2]
    assert "sandbox_image" not in cri
    assert cri["containerd"]["snapshotter"] == "overlayfs"  # the main file's CRI table, carried
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert any("sandbox_image" in note for note in plan.notes)
    assert any("replaces a whole plugin table" in note for note in plan.notes)


def test_a_dropin_of_another_schema_is_written_anew() -> None:
    old = f'version = 3\n[plugins."{V3}".containerd.runtimes.nvidia.options]\n  BinaryName = "/x"\n'
    plan = plan_runtime_merge("version = 2\n", containerd_version="2.1", settings=RuntimeSettings(), dropin_text=old)
    data = tomllib.loads(plan.files[1].new_text)
    assert data["version"] == 2 and V3 not in data["plugins"]
    assert data["plugins"][V2]["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == NVIDIA
    assert any("written for config version 3" in note and "BinaryName" in note for note in plan.notes)


def test_1x_dropin_warns_about_other_imports() -> None:
    text = 'version = 2\nimports = ["/etc/containerd/registry.toml"]\n'
    plan = plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings())
    assert any("/etc/containerd/registry.toml" in note and "--in-place" in note for note in plan.notes)


def test_in_place_refuses_while_an_imported_dropin_would_override_it() -> None:
    text = f'version = 2\nimports = ["{RuntimeSettings().dropin_path}"]\n'
    with pytest.raises(ContainerdConfigError, match="override"):
        plan_runtime_merge(
            text, containerd_version="1.7", settings=RuntimeSettings(in_place=True), dropin_text="version = 2\n"
        )


def test_a_layout_tomlkit_cannot_read_still_gets_its_imports_entry() -> None:
    # Valid TOML (tables defined out of order) that tomlkit fails to parse; found by the
    # property test. Drop-in mode adds the imports line as plain text.
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        'snapshotter = "overlayfs"\n'
        "runtimes = { runc = { options = { SystemdCgroup = true } } }\n"
        '[plugins."io.containerd.grpc.v1.cri"]\n'
        "enable_selinux = false\n"
        '[plugins."io.containerd.internal.v1.opt"]\n'
        'path = "/opt/containerd"\n'
        "[plugins]\n"
        '[plugins."io.containerd.grpc.v1.cri".cni]\n'
        'bin_dir = "/opt/cni/bin"\n'
    )
    plan = plan_runtime_merge(text, containerd_version="1.7", settings=RuntimeSettings())
    new = plan.files[0].new_text
    assert tomllib.loads(new) == {**tomllib.loads(text), "imports": [RuntimeSettings().dropin_path]}
    assert new.startswith('version = 2\nimports = ["/etc/containerd/conf.d/99-nvidia.toml"]\n')
    runtimes = tomllib.loads(plan.files[1].new_text)["plugins"][V2]["containerd"]["runtimes"]
    assert runtimes["nvidia"]["options"]["SystemdCgroup"] is True


def test_file_change_and_plan_diffs() -> None:
    unchanged = FileChange("/a.toml", "x = 1\n", "x = 1\n")
    assert not unchanged.changed and unchanged.diff() == ""
    edited = FileChange("/a.toml", "x = 1", "x = 2\n")
    assert edited.diff() == "--- /a.toml\n+++ /a.toml\n@@ -1 +1 @@\n-x = 1\n\\ No newline at end of file\n+x = 2\n"


# -- k3s ------------------------------------------------------------------------------------


K3S_GENERATED = f"""\
# File generated by k3s. DO NOT EDIT. Use config.toml.tmpl instead.
version = 3
root = "/var/lib/rancher/k3s/agent/containerd"

[plugins."{V3}".containerd]
  snapshotter = "overlayfs"

[plugins."{V3}".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."{V3}".containerd.runtimes.runc.options]
  SystemdCgroup = true

[plugins."{V3}".containerd.runtimes."nvidia"]
  runtime_type = "io.containerd.runc.v2"

[plugins."{V3}".containerd.runtimes."nvidia".options]
  BinaryName = "/usr/bin/nvidia-container-runtime"
  SystemdCgroup = true
"""


def test_k3s_gets_no_files_and_an_explanation() -> None:
    plan = plan_runtime_merge(
        K3S_GENERATED,
        containerd_version="containerd github.com/k3s-io/containerd v2.0.5-k3s1",
        settings=RuntimeSettings(),
        config_path="/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        k3s=True,
    )
    assert plan.files == () and not plan.changed and plan.mode == "k3s"
    assert any("config.toml.tmpl" in note and "restart k3s" in note for note in plan.notes)
    assert any("already has runtime" in note for note in plan.notes)
    bare = K3S_GENERATED.split('[plugins."io.containerd.cri.v1.runtime".containerd.runtimes."nvidia"]')[0]
    plan = plan_runtime_merge(bare, containerd_version="2.0", settings=RuntimeSettings(), k3s=True)
    assert any("no runtime" in note and "restart" in note for note in plan.notes)


@pytest.mark.parametrize(
    "settings",
    [
        RuntimeSettings(in_place=True),
        RuntimeSettings(set_default_runtime=True),
        RuntimeSettings(runtime_name="gpu"),
        RuntimeSettings(binary_name="/opt/nvidia/nvidia-container-runtime"),
    ],
)
def test_k3s_refuses_what_only_its_own_template_could_do(settings: RuntimeSettings) -> None:
    with pytest.raises(K3sManagedConfigError) as caught:
        plan_runtime_merge(K3S_GENERATED, containerd_version="1.7", settings=settings, k3s=True)
    assert "k3s" in str(caught.value) and caught.value.fix


# -- reading effective configs (containerd config dump) -----------------------------------


DUMP_16 = f"""\
imports = ["/etc/containerd/config.toml"]
version = 2

[plugins]
  [plugins."{V2}"]
    [plugins."{V2}".containerd]
      default_runtime_name = "runc"
      [plugins."{V2}".containerd.runtimes]
        [plugins."{V2}".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."{V2}".containerd.runtimes.runc.options]
            BinaryName = ""
            SystemdCgroup = true
"""

DUMP_21 = f"""\
version = 3
imports = []

[plugins]
  [plugins.'{V3}']
    [plugins.'{V3}'.containerd]
      default_runtime_name = 'runc'
      [plugins.'{V3}'.containerd.runtimes]
        [plugins.'{V3}'.containerd.runtimes.nvidia]
          runtime_type = 'io.containerd.runc.v2'
          [plugins.'{V3}'.containerd.runtimes.nvidia.options]
            BinaryName = '/usr/bin/nvidia-container-runtime'
            SystemdCgroup = false
        [plugins.'{V3}'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'
          [plugins.'{V3}'.containerd.runtimes.runc.options]
            SystemdCgroup = true
"""


def test_reading_effective_configs() -> None:
    assert dump_schema(DUMP_16) == 2 and dump_schema(DUMP_21) == 3
    assert effective_runtime(DUMP_16) is None
    assert default_runtime_name(DUMP_16) == "runc"
    runtime = effective_runtime(DUMP_21, "nvidia")
    assert runtime is not None and runtime["runtime_type"] == "io.containerd.runc.v2"


def test_runtime_problems_name_what_breaks() -> None:
    (missing,) = runtime_problems(DUMP_16)
    assert 'no runtime "nvidia"' in missing and "F17" in missing and "runc" in missing
    (cgroup,) = runtime_problems(DUMP_21)
    assert "SystemdCgroup = false" in cgroup and '"runc" has true' in cgroup
    problems = runtime_problems(DUMP_21, binary_name="/usr/local/nvidia/toolkit/nvidia-container-runtime")
    assert len(problems) == 2 and "no NVIDIA devices" in problems[0]
    plain = DUMP_21.replace("'/usr/bin/nvidia-container-runtime'", "''")
    assert any("'runc'" in p and "not the NVIDIA container runtime" in p for p in runtime_problems(plain))


def test_a_broken_dump_is_a_host_state_error() -> None:
    with pytest.raises(HostStateError):
        effective_runtime("containerd: failed to load TOML\n")
