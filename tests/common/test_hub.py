"""Resolution: a local folder, then the Hugging Face cache (offline), then a download when allowed; uploads."""

from pathlib import Path

import pytest

from conftest import TINY
from gpt2.common import hub
from gpt2.common.checkpoint import load_checkpoint, save_checkpoint
from gpt2.common.config import GPT2Config
from gpt2.demo import random_state

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cache(root, repo_id="openai-community/gpt2", commit=COMMIT, ref="main", shard=False):
    """A folder laid out as huggingface_hub lays out its cache (blobs omitted: snapshots hold the files)."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(commit)
    snapshot = repo / "snapshots" / commit
    config = GPT2Config(**TINY)
    save_checkpoint(random_state(config), snapshot, config, max_shard_size="1KB" if shard else None)
    return snapshot, config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub.hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.hub_cache_dir() == tmp_path / "c"
    assert hub.hub_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


@pytest.mark.parametrize("shard", [False, True])
def test_load_from_cache(monkeypatch, tmp_path, shard):
    snapshot, config = make_cache(tmp_path / "cache", shard=shard)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    state, loaded = load_checkpoint("openai-community/gpt2")
    assert loaded == GPT2Config.from_pretrained(snapshot) and len(state) == 28
    assert GPT2Config.from_pretrained("openai-community/gpt2").n_layer == TINY["n_layer"]  # cache beats the preset
    assert len(load_checkpoint("openai-community/gpt2", revision=COMMIT)[0]) == 28


def test_revision_and_no_exist(monkeypatch, tmp_path):
    snapshot, _ = make_cache(tmp_path, ref="v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub.resolve_file("openai-community/gpt2", "config.json") is None  # no refs/main
    assert hub.resolve_file("openai-community/gpt2", "config.json", revision="v1") == snapshot / "config.json"
    no_exist = tmp_path / "models--openai-community--gpt2" / ".no_exist" / COMMIT
    no_exist.mkdir(parents=True)
    (no_exist / "tf_model.h5").touch()
    assert hub.resolve_file("openai-community/gpt2", "tf_model.h5", revision="v1") is None


def test_local_folder_wins_and_empty_folders_do_not_shadow(monkeypatch, tmp_path):
    make_cache(tmp_path / "cache", repo_id="gpt2")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "gpt2").mkdir()  # e.g. a source tree: holds no model files, does not shadow the name
    assert len(load_checkpoint("gpt2")[0]) == 28
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11, n_positions=7)
    save_checkpoint(random_state(config), tmp_path / "gpt2", config)
    assert load_checkpoint("gpt2")[1].n_layer == 1


def test_offline_errors_say_where_they_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="offline"):
        load_checkpoint("someone/some-model")
    with pytest.raises(FileNotFoundError, match="cache"):
        GPT2Config.from_pretrained("someone/some-model")


def test_download_path_is_used_when_online(monkeypatch, tmp_path):
    """The download code path, with huggingface_hub's function replaced by one serving a folder built here."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import EntryNotFoundError

    served, _ = make_cache(tmp_path / "remote", repo_id="someone/model")
    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None):
        calls.append((repo_id, filename, revision))
        if not (served / filename).is_file():
            raise EntryNotFoundError(f"{filename} not found")
        return str(served / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub, "hub_host_unresolvable", lambda: None)  # as if online: the host name resolves
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    state, config = load_checkpoint("someone/model")
    assert len(state) == 28 and ("someone/model", "model.safetensors", None) in calls
    calls.clear()
    with pytest.raises(FileNotFoundError):
        load_checkpoint("someone/model", local_files_only=True)
    assert calls == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError):
        load_checkpoint("someone/model")
    assert calls == []


def test_push_to_hub_uploads_what_save_pretrained_writes(monkeypatch, tmp_path):
    """push_to_hub of every object, with huggingface_hub's HfApi replaced by one that records the upload."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from gpt2 import GPT2TokenizerFast
    from gpt2.common.generation import GenerationConfig

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploads.append(("create", repo_id, private, exist_ok, self.token))

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None, create_pr=False):
            files = sorted(p.name for p in Path(folder_path).iterdir())
            uploads.append(("upload", repo_id, commit_message, files, create_pr))
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=8)
    assert config.push_to_hub("me/cfg", private=True, token="t") == "commit-info"
    GenerationConfig(max_new_tokens=5).push_to_hub("me/gen", create_pr=True)
    GPT2TokenizerFast.from_pretrained("gpt2").push_to_hub("me/tok", commit_message="tok")
    assert uploads[:2] == [("create", "me/cfg", True, True, "t"), ("upload", "me/cfg", "Upload config",
                                                                   ["config.json"], False)]
    assert uploads[3] == ("upload", "me/gen", "Upload generation config", ["generation_config.json"], True)
    assert uploads[5][2] == "tok" and "tokenizer.json" in uploads[5][3] and "vocab.json" in uploads[5][3]
    torch = pytest.importorskip("torch")
    from gpt2.torch import GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(config).push_to_hub("me/model", max_shard_size="1KB")
    files = uploads[-1][3]
    assert "config.json" in files and "generation_config.json" in files and "model.safetensors.index.json" in files
    with pytest.raises(ValueError, match="repo_id must be a hub repository name"):
        config.push_to_hub("../escape")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline"):
        config.push_to_hub("me/cfg")
