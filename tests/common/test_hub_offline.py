"""Without a network, a name that is not on disk fails at the first connection error, with one message that says
what was looked for and how to work offline -- not after every candidate file name times huggingface_hub's retries
(issue 8: 8 names x 5 retries, 185 s). No test here makes a real request: huggingface_hub is replaced or its
session is."""

from __future__ import annotations

import pytest

from gpt2.cli import main
from gpt2.common import hub
from gpt2.common.checkpoint import resolve_checkpoint

huggingface_hub = pytest.importorskip("huggingface_hub")
requests = pytest.importorskip("requests")
from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError  # noqa: E402

host_unresolvable = hub.hub_host_unresolvable  # the real lookup (the fixture below replaces it)


@pytest.fixture(autouse=True)
def online(monkeypatch, tmp_path):
    """As a user without HF_HUB_OFFLINE, with an empty cache."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # As if the hub's name resolved (it does not here): the download itself is what these tests exercise.
    monkeypatch.setattr(hub, "hub_host_unresolvable", lambda: None)


def fake_download(monkeypatch, error):
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append(filename)
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def _unreachable() -> LocalEntryNotFoundError:
    """What hf_hub_download raises when its HEAD request fails and the cache has no copy."""
    try:
        raise requests.ConnectionError("Failed to resolve 'huggingface.co'")
    except requests.ConnectionError as cause:
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub") from cause
        except LocalEntryNotFoundError as e:
            return e


@pytest.mark.parametrize("error", [_unreachable(), requests.ConnectionError("connection reset"),
                                   requests.ReadTimeout("read timed out")])
def test_the_first_connection_error_ends_the_search(monkeypatch, error):
    calls = fake_download(monkeypatch, error)
    with pytest.raises(ConnectionError) as raised:
        resolve_checkpoint("someone/not-here")
    assert len(calls) == 1
    message = str(raised.value)
    assert "'someone/not-here' is not on disk" in message and calls[0] in message
    assert "HF_HUB_OFFLINE=1" in message and "local_files_only=True" in message and "local folder" in message
    assert "'gpt2' resolves its config offline" in message and "\n" not in message


def test_a_preset_name_gets_its_config_offline_and_one_clear_error_for_its_weights(monkeypatch, capsys):
    calls = fake_download(monkeypatch, _unreachable())
    assert main(["convert", "gpt2", "out", "--to", "tf"]) == 1
    err = capsys.readouterr().err
    assert len(calls) == 1 and calls[0] != "config.json"  # the preset's config needed no download
    assert err.startswith("gpt2: error: 'gpt2' is not on disk") and err.count("\n") == 1


def test_from_pretrained_fails_once(monkeypatch):
    pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    calls = fake_download(monkeypatch, _unreachable())
    with pytest.raises(ConnectionError, match="could not be reached"):
        GPT2LMHeadModel.from_pretrained("gpt2")
    assert len(calls) == 1


def test_a_file_the_hub_lacks_still_moves_on_to_the_next_name(monkeypatch):
    """Only an unreachable hub stops the search: a 404 for one file name means: try the next."""
    calls = fake_download(monkeypatch, EntryNotFoundError("404"))
    with pytest.raises(FileNotFoundError, match="no checkpoint for 'someone/not-here'"):
        resolve_checkpoint("someone/not-here")
    assert len(calls) > 1 and len(set(calls)) == len(calls)


def test_local_files_only_and_hf_hub_offline_never_call_the_hub(monkeypatch):
    calls = fake_download(monkeypatch, _unreachable())
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint("someone/not-here", local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline"):
        resolve_checkpoint("someone/not-here")
    assert calls == []


def test_through_huggingface_hub_itself(monkeypatch):
    """The real hf_hub_download over a session whose every request fails to connect: one download's requests
    (huggingface_hub's own retries, sleeps skipped), then our ConnectionError -- not one such round per file name."""
    import huggingface_hub.constants
    import huggingface_hub.utils._http as http

    requested = []

    class Unreachable(requests.Session):
        def request(self, method, url, *args, **kwargs):
            requested.append((method, url))
            raise requests.ConnectionError(f"Failed to resolve 'huggingface.co' ({url})")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read by huggingface_hub at import
    monkeypatch.setattr(http, "get_session", lambda: Unreachable())
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    with pytest.raises(ConnectionError, match="'someone/not-here' is not on disk"):
        resolve_checkpoint("someone/not-here")
    files = {url.rsplit("/", 1)[-1] for _, url in requested}
    assert len(files) == 1 and 1 <= len(requested) <= 6, requested


def test_offline_help_names_the_cache(tmp_path):
    assert str(tmp_path / "cache") in hub.offline_help()


def test_an_unresolvable_hub_fails_before_any_request(monkeypatch):
    """No network (the host name does not resolve): the error comes at once, before huggingface_hub's retries."""
    calls = fake_download(monkeypatch, AssertionError("huggingface_hub must not be called"))
    monkeypatch.setattr(hub, "hub_host_unresolvable", lambda: "cannot resolve 'huggingface.co': no network")
    with pytest.raises(ConnectionError, match="cannot resolve 'huggingface.co'.*HF_HUB_OFFLINE=1"):
        resolve_checkpoint("someone/not-here")
    assert calls == []


def test_the_host_lookup(monkeypatch):
    import socket

    def fail(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    for var in hub._PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example")
    assert "cannot resolve 'hub.example'" in host_unresolvable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the proxy resolves names: no verdict here
    assert host_unresolvable() is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [("resolved",)])
    assert host_unresolvable() is None
