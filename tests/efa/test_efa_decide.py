"""EFA: what the agent sees on the node (under --root), what it decides, and what `check`/`plan` say."""

import json
from pathlib import Path

import pytest

from agent.base.noderoot import NodeRoot
from agent.cli import main
from agent.config.settings import EfaSettings
from agent.efa import decision as efa_decision
from agent.efa import facts as efa_facts
from agent.pipeline.health import FAIL, PASS, SKIP, WARN
from tests.support.efa_helpers import LIBFABRIC, converged_node, efa_node, write_config, write_installed

# The unit checks as on a healthy node: these tests are about files, not systemd (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("units_serving")


SHA = "ab" * 32
PINNED = EfaSettings(sha256=SHA)  # version 1.48.0, install auto


def facts(root: Path, settings: EfaSettings = PINNED) -> efa_facts.EfaFacts:
    return efa_facts.discover(NodeRoot(str(root)), settings)


# --- discovery ----------------------------------------------------------------------------------


def test_efa_device_is_found_by_vendor_and_device_id(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    found = facts(root)
    assert found.devices == ("rdmap0s6",)  # the Mellanox device beside it does not count
    assert found.hardware
    assert found.installer_version is None and not found.fi_info and not found.cached


def test_no_efa_device(tmp_path: Path) -> None:
    assert not facts(efa_node(tmp_path / "node", efa=False)).hardware
    bare = tmp_path / "bare"
    bare.mkdir()
    assert facts(bare).devices == ()  # no /sys/class/infiniband at all


@pytest.mark.parametrize("device", ["0xefa0", "0xefa1", "0xefa2", "0xEFA3"])
def test_every_efa_device_generation_counts(tmp_path: Path, device: str) -> None:
    from tests.support.efa_helpers import add_rdma_device

    add_rdma_device(tmp_path, "rdmap16s27", "0x1d0f", device)
    assert facts(tmp_path).devices == ("rdmap16s27",)


def test_an_amazon_device_that_is_not_efa_does_not_count(tmp_path: Path) -> None:
    from tests.support.efa_helpers import add_rdma_device

    add_rdma_device(tmp_path, "ena0", "0x1d0f", "0xec20")
    assert facts(tmp_path).devices == ()


def test_installed_version_and_libfabric_from_fi_info(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0")
    found = facts(root)
    assert found.installer_version == "1.48.0"
    assert found.fi_info and found.libfabric_version == LIBFABRIC
    assert found.installed_at("1.48.0") and not found.installed_at("1.47.0")
    assert found.problems == ()


def test_the_amis_minimal_install_is_not_installed(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0", fi_info=False)
    found = facts(root)
    assert found.installer_version == "1.48.0" and not found.fi_info
    assert not found.installed_at("1.48.0")


def test_unusable_version_file_and_broken_fi_info_are_problems_not_crashes(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0")
    (root / "opt/amazon/efa_installed_packages").write_text("libfabric-aws-2.1.0\n")
    broken = "#!/bin/sh\necho 'error while loading libfabric.so.1' >&2\nexit 127\n"
    (root / "opt/amazon/efa/bin/fi_info").write_text(broken)
    found = facts(root)
    assert found.installer_version is None and found.libfabric_version is None
    assert any("first line is not '# EFA installer version: X.Y.Z'" in p for p in found.problems)
    assert any("exited 127" in p and "libfabric.so.1" in p for p in found.problems)


def test_cached_tarball_is_noticed(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    cache = root / "var/cache/gpu-node-agent"
    cache.mkdir(parents=True)
    (cache / "aws-efa-installer-1.48.0.tar.gz").write_bytes(b"x")
    assert facts(root).cached
    assert not facts(root, PINNED._replace(version="1.49.0")).cached


# --- decision -------------------------------------------------------------------------------------


def decide(root: Path, settings: EfaSettings = PINNED):  # type: ignore[no-untyped-def]
    return efa_decision.decide(facts(root, settings), settings, NodeRoot(str(root)))


def test_not_installed_with_hardware_installs(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    action, problems = decide(root)
    assert action.install and problems == ()
    assert "not installed" in action.reason
    assert action.describe().startswith("install aws-efa-installer 1.48.0: ")
    assert "download https://efa-installer.amazonaws.com/aws-efa-installer-1.48.0.tar.gz" in action.describe()


def test_installed_at_the_pin_does_nothing(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0")
    action, problems = decide(root)
    assert not action.install and problems == ()
    assert action.describe() == f"no action: EFA userspace 1.48.0 installed, libfabric {LIBFABRIC}"


def test_minimal_install_gets_the_userspace(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0", fi_info=False)
    action, _ = decide(root)
    assert action.install
    assert "--minimal install has no libfabric" in action.reason


def test_a_pin_change_reinstalls(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    write_installed(root, "1.48.0")
    action, _ = decide(root, PINNED._replace(version="1.49.0"))
    assert action.install and action.reason == "installed 1.48.0, pinned 1.49.0"


def test_auto_without_hardware_does_nothing_even_without_sha256(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node", efa=False)
    action, problems = decide(root, EfaSettings())
    assert not action.install and problems == ()
    assert "not applicable" in action.reason
    assert not action.applicable  # `plan` does not mention EFA on such a node


def test_always_installs_without_hardware_and_never_never_installs(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node", efa=False)
    assert decide(root, PINNED._replace(install="always"))[0].install
    with_hw = efa_node(tmp_path / "hw")
    action, problems = decide(with_hw, PINNED._replace(install="never"))
    assert not action.install and problems == () and action.reason == "efa.install is never"


def test_without_sha256_the_agent_refuses_and_says_how_to_get_it(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    action, problems = decide(root, EfaSettings())
    assert not action.install
    assert "refused" in action.reason
    (problem,) = problems
    assert "neither efa.sha256 nor efa.gpg_fingerprint is set" in problem
    assert "curl -fsSLO https://efa-installer.amazonaws.com/aws-efa-installer-1.48.0.tar.gz" in problem
    assert "sha256sum aws-efa-installer-1.48.0.tar.gz" in problem
    assert "\n" not in problem


@pytest.mark.parametrize("arg", ["--minimal", "--skip-limit-conf", "-u"])
def test_installer_args_that_break_the_node_are_refused(tmp_path: Path, arg: str) -> None:
    root = efa_node(tmp_path / "node")
    settings = PINNED._replace(installer_args=("-y", arg))
    action, problems = decide(root, settings)
    assert not action.install
    assert f"efa.installer_args has {arg}: " in problems[0]
    result = efa_decision.check(facts(root, settings), settings)
    assert result.status == FAIL and f"efa.installer_args has {arg}" in result.message


def test_a_cached_tarball_is_named_in_the_plan(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "node")
    cache = root / "var/cache/gpu-node-agent"
    cache.mkdir(parents=True)
    (cache / "aws-efa-installer-1.48.0.tar.gz").write_bytes(b"x")
    action, _ = decide(root)
    assert ("from the cache /var/cache/gpu-node-agent/aws-efa-installer-1.48.0.tar.gz "
            "(re-verified before use)") in action.describe()


def test_the_url_is_always_pinned() -> None:
    assert efa_facts.installer_url(EfaSettings(base_url="https://mirror.example.com/efa/")) == (
        "https://mirror.example.com/efa/aws-efa-installer-1.48.0.tar.gz")
    with pytest.raises(efa_facts.EfaError, match="not a pinned version"):
        efa_facts.tarball_name("latest")


# --- the efa check --------------------------------------------------------------------------------


def test_check_skips_without_hardware(tmp_path: Path) -> None:
    result = efa_decision.check(facts(efa_node(tmp_path / "n", efa=False)), PINNED)
    assert result.status == SKIP
    assert result.message == "no EFA device under /sys/class/infiniband: not applicable"


def test_check_passes_at_the_pin(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "n")
    write_installed(root, "1.48.0")
    result = efa_decision.check(facts(root), PINNED)
    assert result.status == PASS
    assert result.message == f"EFA userspace 1.48.0, libfabric {LIBFABRIC} (rdmap0s6)"
    assert result.details["devices"] == ["rdmap0s6"]


def test_check_fails_when_the_userspace_is_missing_or_another_version(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "n")
    write_installed(root, "1.48.0", fi_info=False)
    result = efa_decision.check(facts(root), PINNED)
    assert result.status == FAIL and "--minimal" in result.message and "run` installs it" in result.message
    write_installed(root, "1.47.0")
    assert efa_decision.check(facts(root), PINNED).message.startswith("installed 1.47.0, pinned 1.48.0")


def test_check_without_sha256_fails_with_the_way_to_get_it(tmp_path: Path) -> None:
    result = efa_decision.check(facts(efa_node(tmp_path / "n")), EfaSettings())
    assert result.status == FAIL and "sha256sum" in result.message


def test_check_with_install_never(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "n")
    never = PINNED._replace(install="never")
    assert efa_decision.check(facts(root), never).status == WARN
    write_installed(root, "1.38.0")
    result = efa_decision.check(facts(root), never)
    assert result.status == PASS and "not managed" in result.message


def test_check_warns_when_fi_info_is_broken(tmp_path: Path) -> None:
    root = efa_node(tmp_path / "n")
    write_installed(root, "1.48.0")
    (root / "opt/amazon/efa/bin/fi_info").write_text("#!/bin/sh\nexit 1\n")
    assert efa_decision.check(facts(root), PINNED).status == WARN


# --- through the command line ---------------------------------------------------------------------


def test_check_json_shows_efa_skip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = converged_node(tmp_path / "node", hardware=False)
    assert main(["--root", str(root), "check", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (entry,) = [c for c in doc["checks"] if c["name"] == "efa"]
    assert entry["status"] == "skip"


def test_plan_shows_the_efa_action_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = converged_node(tmp_path / "node")
    write_installed(root, "1.47.0")
    config = write_config(tmp_path / "config.yaml", version="1.48.0", sha256=SHA)
    assert main(["--root", str(root), "--config", str(config), "plan"]) == 0
    out = capsys.readouterr().out
    assert ("efa: install aws-efa-installer 1.48.0: installed 1.47.0, pinned 1.48.0; download "
            f"https://efa-installer.amazonaws.com/aws-efa-installer-1.48.0.tar.gz (sha256 {SHA})") in out
    assert "converged" not in out


def test_plan_without_sha256_is_a_problem_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    root = converged_node(tmp_path / "node")
    assert main(["--root", str(root), "plan"]) == 1
    out = capsys.readouterr().out
    assert "efa: no action: EFA userspace not installed" in out
    assert "problem (not fixed): neither efa.sha256 nor efa.gpg_fingerprint is set" in out


def test_plan_without_efa_hardware_does_not_mention_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    root = converged_node(tmp_path / "node", hardware=False)
    assert main(["--root", str(root), "plan"]) == 0
    assert capsys.readouterr().out == "nothing to do: the node is converged\n"
    config = write_config(tmp_path / "config.yaml", install="always", sha256=SHA)
    assert main(["--root", str(root), "--config", str(config), "plan"]) == 0
    assert "efa: install aws-efa-installer 1.48.0: EFA userspace not installed" in capsys.readouterr().out


def test_plan_when_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = converged_node(tmp_path / "node")
    write_installed(root, "1.48.0")
    assert main(["--root", str(root), "plan"]) == 0
    out = capsys.readouterr().out
    assert "efa: no action: EFA userspace 1.48.0 installed" in out
    assert "nothing to do: the node is converged" in out
