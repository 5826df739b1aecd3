"""One validation path for `run`, `launch` and `launch --check`: every error reported, each
with its key path; what `launch` refuses, `--check` refuses; duplicate keys are errors."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
from collections.abc import Iterator

import pytest

from engines.spec import ModelSpec, sidecar_path
from stream.cli import main
from stream.config import ConfigError, PipelineConfig, SourceConfig
from stream.launch_file import load_launch


def _free_port() -> int:
    """A TCP port free just now (the checks probe endpoints' ports: not a fixed 5555)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback TCP port another socket listens on while the block runs."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


BAD = """\
sources:
  - uri: bogus://x
  - uri: /nonexistent/clip.mp4
    max_retries: -5
  - uri: 'test://'
    stall_timeout: .nan
model: /nonexistent/model.onnx
metrics_port: 99999
"""

EXPECTED = [
    "sources[1].max_retries: must be >= 0, or -1 to retry forever; got -5",
    "sources[2].stall_timeout: must be a number of seconds > 0, got nan",
    "metrics_port: must be a TCP port 1..65535, got 99999",
    "sources[0].uri: source 'bogus://x': unknown scheme 'bogus://'",
    "sources[1].uri: source '/nonexistent/clip.mp4': video file",
    "model: model file /nonexistent/model.onnx not found",
]


@pytest.mark.parametrize("check", [True, False], ids=["--check", "launch"])
def test_every_error_is_reported_with_its_key_path_by_check_and_launch_alike(
        tmp_path, capsys, check):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["launch", str(path), *(["--check"] if check else [])]) == 2
    cap = capsys.readouterr()
    assert "OK" not in cap.out and "starting" not in cap.err
    assert f"{path}: 6 errors:" in cap.err
    for needle in EXPECTED:
        assert needle in cap.err, cap.err


def test_duplicate_keys_are_errors_not_silently_last_wins(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("sources:\n  - uri: 'test://'\n    uri: 'test://ball'\n"
                    "model: a.onnx\nthreads: 1\nmodel: b.onnx\n")
    with pytest.raises(ConfigError) as e:
        load_launch(path)
    assert str(path) in str(e.value)
    assert "uri: duplicate key (lines 2 and 3)" in str(e.value)
    assert "model: duplicate key (lines 4 and 6)" in str(e.value)


def test_yaml_merge_keys_work_and_x_keys_hold_the_shared_parts(tmp_path):
    """`<<: *anchor` merges (they failed as an unknown tag: the duplicate-key check
    constructed the merge key itself); a key set beside the merge wins and is not a
    duplicate; top-level x-... keys are the file's own; a duplicate is still caught."""
    path = tmp_path / "merge.yaml"
    path.write_text("x-cam: &cam {stall_timeout: 2.0, max_retries: 5}\nsources:\n"
                    "  - <<: *cam\n    id: a\n    uri: 'test://'\n    stall_timeout: 3.0\n"
                    "  - <<: *cam\n    id: b\n    uri: 'test://ball'\n")
    cfg = load_launch(path)
    assert [(s.id, s.stall_timeout, s.max_retries) for s in cfg.sources] == [
        ("a", 3.0, 5), ("b", 2.0, 5)]
    path.write_text(path.read_text() + "    id: c\nsources-x: 1\nx-b: &b {max_retries: 1}\n"
                    "publish: {<<: *b, <<: *b}\n")
    with pytest.raises(ConfigError) as e:
        load_launch(path)
    assert "id: duplicate key" in str(e.value) and "sources-x: unknown key" in str(e.value)
    assert "<<: duplicate key" in str(e.value) and "give one <<: [*a, *b]" in str(e.value)


def test_unnamed_sources_get_the_cli_names_in_a_launch_file(tmp_path, capsys, tiny_model):
    path = tmp_path / "two.yaml"
    path.write_text(f"sources: [{{uri: 'test://'}}, {{uri: 'test://ball'}}]\n"
                    f"model: {tiny_model}\n")
    assert main(["launch", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "source cam0: test://" in out and "source cam1: test://ball" in out
    clash = tmp_path / "clash.yaml"
    clash.write_text("sources: [{uri: 'test://', id: cam1}, {uri: 'test://ball'}]\n")
    with pytest.raises(ConfigError, match=r"sources\[1\].id: 'cam1' is already the id of "
                                          r"sources\[0\]"):
        load_launch(clash)


def test_check_loads_the_model_so_a_sidecar_mismatch_is_not_ok(tmp_path, capsys, tiny_model):
    spec = ModelSpec.load(sidecar_path(tiny_model))
    dataclasses.replace(spec, input_size=(32, 32)).save(sidecar_path(tiny_model))
    path = tmp_path / "l.yaml"
    path.write_text(f"sources: [{{uri: 'test://'}}]\nmodel: {tiny_model}\n")
    assert main(["launch", str(path), "--check"]) == 2
    cap = capsys.readouterr()
    assert "OK" not in cap.out and "model: " in cap.err and "32x32" in cap.err


def test_check_accepts_a_good_file(tmp_path, capsys, tiny_model):
    (tmp_path / "models").mkdir(exist_ok=True)
    path = tmp_path / "good.yaml"
    path.write_text(f"sources:\n  - id: yard\n    uri: 'test://ball?width=64&height=48'\n"
                    f"model: {tiny_model.relative_to(tmp_path)}\n"
                    f"publish: {{endpoints: ['ipc://{tmp_path}/seg.sock', "
                    f"'tcp://*:{_free_port()}']}}\n")
    assert main(["launch", str(path), "--check"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"{path}: OK" in out and "runs: until stopped" in out and "preview" not in out
    # what an override turns on is shown (a preview set with --set left no trace)
    port = _free_port()
    assert main(["launch", str(path), "--check", "--set", f"preview.port={port}",
                 "--set", "duration=5", "--set", "batch=2"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"preview: http://127.0.0.1:{port}/" in out and "runs: after 5 s" in out
    assert "engine: batch 2" in out


def test_bad_endpoints_and_keys_folder_are_caught_before_binding(tmp_path):
    path = tmp_path / "ep.yaml"
    path.write_text("sources: [{uri: 'test://'}]\npublish:\n"
                    "  endpoints: ['ipc:///nonexistent/dir/seg.sock', 'tcp://*:99999']\n"
                    "  curve_keys: /nonexistent/keys\n")
    with pytest.raises(ConfigError) as e:
        from stream.validate import check_launch

        check_launch(path)
    text = str(e.value)
    assert "publish.endpoints[0]: folder /nonexistent/dir of" in text
    assert "publish.endpoints[1]: tcp://*:99999 needs a port 1..65535" in text
    assert "publish.curve_keys: folder /nonexistent/keys not found" in text


def test_run_reports_every_bad_option_at_once(tiny_model, capsys):
    code = main(["run", "--source", "bogus://x", "--source", "/nonexistent/clip.mp4",
                 "--model", "/nonexistent/model.onnx", "--publish", f"tcp://*:{_free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "3 errors:" in err
    assert "sources[0].uri" in err and "sources[1].uri" in err and "model: model file" in err
    assert "valid sources" in err  # the forms, listed once


def test_config_values_are_range_checked_in_code_too():
    with pytest.raises(ConfigError, match="stall_timeout: must be a number of seconds > 0"):
        SourceConfig("test://", stall_timeout=math.inf)
    with pytest.raises(ConfigError) as e:
        PipelineConfig(sources=(SourceConfig("test://"),), metrics_port=0, duration=-1,
                       max_frames=-3)
    assert len(e.value.errors) == 3


def test_check_never_prints_an_rtsp_password(tmp_path, capsys):
    from stream.cli import main

    f = tmp_path / "cam.yaml"
    f.write_text("version: 1\nsources:\n  - {id: front, uri: 'rtsp://admin:hunter2@10.0.0.5/s'}\n")
    code = main(["launch", str(f), "--check"])
    out = capsys.readouterr()
    assert code == 0, out
    assert "hunter2" not in out.out + out.err
    assert "rtsp://admin:***@10.0.0.5/s" in out.out


def test_validation_errors_never_print_a_password(tmp_path, capsys):
    from stream.cli import main

    f = tmp_path / "cam.yaml"
    f.write_text("version: 1\nsources:\n"
                 "  - {id: rear, uri: 'rtsp://admin:s3cret@10.0.0.5/live?latency=abc'}\n")
    assert main(["launch", str(f), "--check"]) == 2
    assert main(["launch", str(f), "--check", "--set",
                 "sources[0].uri=rtsp://root:hunter2@cam/x?latency=zz"]) == 2
    assert main(["run", "--source", "rtsp://admin:s3cret@10.0.0.5/live?latency=abc",
                 "--duration", "1"]) == 2
    out = capsys.readouterr()
    assert "s3cret" not in out.out + out.err and "hunter2" not in out.out + out.err
    assert "***@" in out.out + out.err


@pytest.mark.parametrize("kind", ["utf16", "no-permission"])
def test_an_unreadable_launch_file_is_a_clear_error_not_a_traceback(tmp_path, capsys, kind):
    """A UTF-16 or binary file, a file the service user may not read: exit 2 naming the
    file (it was a traceback and exit 1, which a service restarts forever)."""
    path = tmp_path / f"{kind}.yaml"
    if kind == "utf16":
        path.write_bytes("sources: [{uri: 'test://'}]\n".encode("utf-16"))
    else:
        path.write_text("sources: [{uri: 'test://'}]\n")
        path.chmod(0)
        if os.access(path, os.R_OK):
            pytest.skip("running as root: every file is readable")
    for check in (["--check"], []):
        assert main(["launch", str(path), *check]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err, err
        assert ("not UTF-8 text" if kind == "utf16" else "cannot read launch file") in err


def test_a_metrics_port_in_use_is_refused_by_check_and_launch(tmp_path, capsys, tiny_model):
    pytest.importorskip("prometheus_client")
    with _busy_port() as port:
        path = tmp_path / "m.yaml"
        path.write_text(f"sources: [{{uri: 'test://ball?width=64&height=48'}}]\n"
                        f"model: {tiny_model}\nmetrics_port: {port}\n"
                        f"publish: {{endpoints: ['ipc://{tmp_path}/seg.sock']}}\n")
        for check in (["--check"], []):
            assert main(["launch", str(path), *check]) == 2
            err = capsys.readouterr().err
            assert f"metrics_port: 127.0.0.1:{port} is already in use" in err, err
            assert f"e.g. {port + 1} (--metrics-port, or metrics_port in a launch file)" in err
    path.write_text(path.read_text().replace(f"metrics_port: {port}",
                                             f"metrics_port: {port}\nmetrics_bind: 10.255.255.254"))
    # an address not on this machine (yet: DHCP at boot) is retried by a service: exit 1
    assert main(["launch", str(path), "--check"]) == 1
    assert "metrics_bind: cannot listen on 10.255.255.254" in capsys.readouterr().err
    path.write_text(path.read_text() + "threads: 0\n")  # with a real error beside it: 2
    assert main(["launch", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "threads: must be 1..256" in err and "metrics_bind" in err


def test_a_preview_address_not_on_this_machine_yet_exits_1_too(tmp_path, capsys):
    """The preview's check passed its problem on through ConfigError, whose redaction made
    it a plain text: exit 2, the service down for good."""
    pytest.importorskip("tornado")
    path = tmp_path / "p.yaml"
    path.write_text(f"sources: [{{uri: 'test://'}}]\npreview: {{port: {_free_port()}, "
                    "host: 10.255.255.254}\n")
    assert main(["launch", str(path), "--check"]) == 1
    assert "preview.host: cannot listen on 10.255.255.254" in capsys.readouterr().err


def test_a_publish_address_not_on_this_machine_yet_exits_1_so_a_service_retries(
        tiny_model, capsys):
    code = main(["run", "--source", "test://?width=64&height=48", "--model", str(tiny_model),
                 "--publish", f"tcp://10.255.255.254:{_free_port()}", "--max-frames", "1"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "cannot bind tcp://10.255.255.254" in err and "not on this machine yet?" in err


def test_values_past_what_the_socket_or_runtime_takes_are_config_errors(tmp_path, capsys):
    """sndhwm 2**31 reached setsockopt as an OverflowError traceback; threads 10**6 made
    ONNX Runtime try to start a million threads."""
    path = tmp_path / "big.yaml"
    path.write_text("sources: [{uri: 'test://'}]\nthreads: 1000000\n"
                    f"publish: {{endpoints: ['tcp://*:{_free_port()}'], sndhwm: 2147483648, "
                    "linger_ms: 99999999999}\n")
    assert main(["launch", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "threads: must be 1..256, got 1000000" in err
    assert "publish.sndhwm: must be 1..10000 messages per subscriber" in err
    assert "publish.linger_ms: must be 0..60000 ms" in err


def test_a_machine_error_names_its_own_source_when_another_is_malformed(tmp_path, capsys):
    path = tmp_path / "idx.yaml"
    path.write_text("sources:\n  - 'test://'\n  - uri: bogus://x\n")
    assert main(["launch", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert "sources[1].uri: source 'bogus://x': unknown scheme" in err, err
    assert "sources[0].uri" not in err


def test_check_finds_a_tcp_port_in_use_and_a_keys_folder_without_the_server_key(
        tmp_path, capsys):
    """`launch --check` said OK to both; `launch` then failed at bind or at CURVE start."""
    keys = tmp_path / "keys"
    (keys / "allowed_clients").mkdir(parents=True)
    with _busy_port() as port:
        path = tmp_path / "busy.yaml"
        path.write_text(f"sources: [{{uri: 'test://'}}]\npublish: {{endpoints: "
                        f"['tcp://127.0.0.1:{port}'], curve_keys: {keys}}}\n")
        assert main(["launch", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"publish.endpoints[0]: tcp://127.0.0.1:{port}: the port is already in use" in err
    assert f"publish.curve_keys: key file {keys}/server.key_secret not found" in err
    assert "no client public keys" in err


@pytest.mark.parametrize("text, why", [
    ("", "the file is empty: a launch file needs at least `sources:`"),
    ("# a comment only\n", "the file is empty"),
    ("sources:\n", "sources: empty: give a list with at least one entry"),
    ("sources: [{uri: 'test://', stall_timeout: 1e3}]\n",
     "expected float, got '1e3' (YAML reads 1e3 as text: write it with a dot and a signed "
     "exponent, e.g. 1.0e+03"),
    ("sources: [{uri: 'test://', stall_timeout: '2.5'}]\n", "got '2.5' (quoted: drop the"),
    ("sources: [{uri: 'test://'}]\nbatch: yes\n",
     "batch: expected int, got True (YAML reads unquoted on/off/yes/no as true/false"),
    ("sources: [{uri: 'test://'}]\npublish: {sndhwm: 1e3}\n",
     "got '1e3' (YAML reads 1e3 as text: write the whole number, e.g. 1000)"),
])
def test_common_yaml_slips_get_an_error_that_says_what_to_write(tmp_path, capsys, text, why):
    path = tmp_path / "slip.yaml"
    path.write_text(text)
    assert main(["launch", str(path), "--check"]) == 2
    assert why in capsys.readouterr().err


def test_a_set_key_written_with_dashes_gets_the_underscore_spelling(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("sources: [{uri: 'test://'}]\n")
    assert main(["launch", str(path), "--check", "--set", "batch-wait-ms=3"]) == 2
    assert "keys are written with underscores: batch_wait_ms" in capsys.readouterr().err


def test_a_set_key_with_a_negative_index_is_told_indexes_count_from_0(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("sources: [{uri: 'test://'}]\n")
    assert main(["launch", str(path), "--check", "--set", "sources[-1].uri=test://"]) == 2
    err = capsys.readouterr().err
    assert "list indexes count from 0 (sources[0] is the first)" in err
    assert "sources[_1]" not in err
