"""export.serve's command line and option parsing, without a server."""

from __future__ import annotations

import pytest
from serve_models import pair_onnx

from export.serve import main, parse_size


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return pair_onnx(tmp_path_factory)


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.onnx"], "no such ONNX file"),
        (["PAIR", "PAIR"], "two models are named 'pair'"),
        (["PAIR", "--max-body", "lots"], "--max-body: not a size"),
        (["PAIR", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["PAIR", "--workers", "0"], "--workers must be >= 1"),
        (["PAIR", "--timeout-read", "0"], "--timeout-read must be a number of seconds > 0"),
        (["PAIR", "--timeout-keep-alive", "inf"], "--timeout-keep-alive must be a number of seconds > 0"),
        (["PAIR", "--port", "1", "--host", "203.0.113.7", "--no-grpc"], "cannot listen on 203.0.113.7:1:"),
        (["PAIR", "--grpc-port", "1", "--host", "203.0.113.7"], "cannot listen on 203.0.113.7:1 for gRPC"),
        ([], "no model: give MODEL.onnx files or --model-repository"),
        (["PAIR", "--model-repository", "REPO"], "not both"),
        (["--model-repository", "REPO/nowhere"], "is not a folder"),
        (["PAIR", "--model-control-mode", "poll"], "--model-control-mode poll needs --model-repository"),
        (["--model-repository", "REPO", "--load-model", "a"], "--load-model needs --model-control-mode explicit"),
        (["--model-repository", "REPO", "--model-control-mode", "explicit", "--workers", "2"], "needs --workers 1"),
        (["--model-repository", "REPO", "--model-control-mode", "explicit", "--load-model", "a"], "--load-model a: no such model"),
        (["--model-repository", "REPO", "--model-control-mode", "poll", "--repository-poll-secs", "0"], "--repository-poll-secs must be"),
    ],
)
def test_cli_errors_are_one_line(pair, tmp_path, capsys, args, message):
    from export.cli import run

    args = [str(pair) if a == "PAIR" else a.replace("REPO", str(tmp_path)) for a in args]
    assert run(main, args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_grpc_port_in_use_is_one_line(pair, capsys):
    import socket

    from export.cli import run

    with socket.create_server(("127.0.0.1", 0)) as taken:  # listening, without SO_REUSEPORT
        port = taken.getsockname()[1]
        assert run(main, [str(pair), "--port", "0", "--grpc-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot listen on 127.0.0.1:{port} for gRPC: Address already in use\n", err


def test_parse_size():
    assert parse_size("8MiB") == 8 * 1024 * 1024
    assert parse_size("512k") == 512_000
    assert parse_size("1.5MB") == 1_500_000
    assert parse_size("1000") == 1000
    for bad in ("", "lots", "0", "-1"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--max-batch", "--max-delay-ms", "--threads", "--max-body", "--workers",
                   "--timeout-read", "--timeout-keep-alive", "--grpc-port", "--no-grpc", "--model-repository",
                   "--model-control-mode", "--load-model", "--repository-poll-secs"):
        assert option in out


def test_listen_sets_the_tcp_protocol_so_asyncio_turns_nagle_off():
    import socket

    from export.serve import listen

    sock = listen("127.0.0.1", 0)
    try:
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP
        # (socket.create_server leaves 0): without it keep-alive answers waited 40 ms.
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()
