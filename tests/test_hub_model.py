"""Publishing a model (issue 5): the file plan and card, the fresh-process load check that refuses broken folders, what
is handed to huggingface_hub, and the user's line — the published folder loads by repo id from a Hub endpoint (a local
stand-in) into a real Hub cache, then again offline, running the card's usage snippet as written."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from modeling_vift.publishing import PublishError, push_model
from modeling_vift.publishing import model as publish_model
from modeling_vift.publishing import upload as publish_upload
from modeling_vift.publishing.upload import upload_to_hub
from modeling_vift.testing_utils import tiny_vift
from tests.fake_hub import FakeHub


BASE_MODELS = ["Qwen/Qwen2.5-7B-Instruct", "google/siglip-so400m-patch14-384"]
TOKEN = "hf_thisIsASecretTokenValue123"


class RecordingApi:
    """Stands in for `huggingface_hub.HfApi`: records every call, uploads nothing."""

    instances = []

    def __init__(self, token=None, with_large_folder=False):
        self.token = token
        self.calls = []
        if with_large_folder:
            self.upload_large_folder = self._recorder("upload_large_folder")
        RecordingApi.instances.append(self)

    def _recorder(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return f"{name}-done"

        return call

    def __getattr__(self, name):
        if name.startswith("_") or name == "upload_large_folder":
            raise AttributeError(name)
        return self._recorder(name)


def save_checkpoint(directory, **config_overrides):
    model, processor = tiny_vift(**config_overrides)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def card_metadata(card):
    match = re.match(r"---\n(.*?)\n---\n", card, flags=re.S)
    return yaml.safe_load(match.group(1))


def card_snippet(card):
    return re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny checkpoint (plus a training leftover) pushed for real up to the HfApi call: verified in a fresh process,
    laid out in `repo/`, uploaded to a recording API with every option set."""
    root = tmp_path_factory.mktemp("published")
    checkpoint = save_checkpoint(str(root / "ckpt"), fusion_alpha=0.7, fusion_beta=0.2, fusion_layers=[1, 3])
    (root / "ckpt" / "optimizer.pt").write_bytes(b"optimizer state")
    api = RecordingApi()
    lines = []
    push_model(
        checkpoint, "org/vift", base_models=BASE_MODELS, datasets=["org/vift-data"], private=True, revision="dev",
        commit_message="First release", local_dir=str(root / "repo"), api=api, log=lines.append,
    )
    return {"root": root, "checkpoint": checkpoint, "repo": str(root / "repo"), "api": api, "log": "\n".join(lines)}


def test_push_verifies_then_creates_the_repo_and_makes_one_commit(published):
    api, repo = published["api"], published["repo"]
    assert "Verified: transformers_modules." in published["log"]  # loaded from its remote code, in a fresh process
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "create_commit"]
    _, args, kwargs = api.calls[0]
    assert args == ("org/vift",) and kwargs == {"repo_type": "model", "private": True, "exist_ok": True}
    assert api.calls[1][2] == {"branch": "dev", "repo_type": "model", "exist_ok": True}
    _, args, kwargs = api.calls[2]
    assert kwargs["commit_message"] == "First release" and kwargs["revision"] == "dev"
    uploaded = {op.path_in_repo: op.path_or_fileobj for op in kwargs["operations"]}
    on_disk = {os.path.relpath(os.path.join(r, n), repo) for r, _, names in os.walk(repo) for n in names}
    assert set(uploaded) == on_disk  # the local folder is exactly what is uploaded
    assert all(os.path.dirname(path) == repo for path in uploaded.values())
    assert {"model.safetensors", "config.json", "modeling_vift.py", "configuration_vift.py", "processing_vift.py",
            "fusion_vift.py", "processor_config.json", "tokenizer.json", "chat_template.jinja",
            "generation_config.json", "README.md"} <= on_disk
    assert "optimizer.pt" not in on_disk and "optimizer.pt" in published["log"]  # left out, and said so


def test_generation_config_carries_the_fusion_defaults(published):
    generation = json.load(open(os.path.join(published["repo"], "generation_config.json")))
    assert generation["fusion_alpha"] == 0.7 and generation["fusion_beta"] == 0.2
    assert generation["fusion_layers"] == [1, 3]
    assert "fusion" not in generation  # plain generation stays the default unless --fusion_by_default


def test_model_card_has_the_hub_metadata(published):
    card = open(os.path.join(published["repo"], "README.md")).read()
    meta = card_metadata(card)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == BASE_MODELS
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["library_name"] == "transformers"
    assert "vift" in meta["tags"] and meta["datasets"] == ["org/vift-data"]
    snippet = card_snippet(card)
    assert 'AutoModel.from_pretrained("org/vift", trust_remote_code=True' in snippet and "fusion=True" in snippet


def test_published_model_loads_by_repo_id_from_the_hub_then_offline_from_its_cache(published, tmp_path):
    """The card's snippet, as written, first against a Hub endpoint serving the published folder (filling a real Hub
    cache), then in a fresh offline process from that cache."""
    snippet = card_snippet(open(os.path.join(published["repo"], "README.md")).read())
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    with FakeHub() as hub:
        commit = hub.add("model", "org/vift", published["repo"])
        online = subprocess.run([sys.executable, "-c", snippet], env={**env, "HF_ENDPOINT": hub.endpoint},
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert online.returncode == 0, online.stderr[-3000:]
    assert not hub.unknown or all("agent-harnesses" in u for u in hub.unknown), hub.unknown
    snapshot = tmp_path / "hf" / "hub" / "models--org--vift" / "snapshots" / commit
    assert (tmp_path / "hf" / "hub" / "models--org--vift" / "refs" / "main").read_text() == commit
    assert (snapshot / "config.json").exists() and (snapshot / "modeling_vift.py").exists()

    offline = subprocess.run([sys.executable, "-c", snippet], env={**env, "HF_HUB_OFFLINE": "1"},
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert len(offline.stdout.strip().splitlines()) >= 1


def test_dry_run_prints_the_plan_and_the_card_and_uploads_nothing(published, capsys):
    from hub.push_model import main

    RecordingApi.instances.clear()
    assert main(["--checkpoint", published["checkpoint"], "--repo_id", "org/vift", "--base_model", BASE_MODELS[0],
                 BASE_MODELS[1], "--token", TOKEN, "--dry_run"]) == 0
    out = capsys.readouterr().out
    for name in ("model.safetensors", "modeling_vift.py", "generation_config.json", "README.md"):
        assert re.search(rf"^\s+{re.escape(name)}\s", out, flags=re.M)
    assert "pipeline_tag: image-text-to-text" in out and "Dry run: verified, nothing uploaded" in out
    assert re.search(r"^Verified: \S+ generated \d+ token", out, flags=re.M)  # the fresh-process check runs offline too
    assert 'revision="<commit hash>"' in out  # the card tells users to pin the code they run
    assert TOKEN not in out and not RecordingApi.instances


def test_an_upload_failure_ends_in_a_clear_message_not_a_traceback(published, monkeypatch, capsys):
    import huggingface_hub

    from hub.push_model import main

    class Response:
        status_code = 403

    class FailingApi(RecordingApi):
        def create_repo(self, *args, **kwargs):
            error = OSError("403 Forbidden: you cannot create a repository in namespace org")
            error.response = Response()
            raise error

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    monkeypatch.setattr(publish_model, "verify_folder", lambda folder, timeout: {"model_class": "x", "new_tokens": 1})
    assert main(["--checkpoint", published["checkpoint"], "--repo_id", "org/vift", "--base_model", BASE_MODELS[0],
                 BASE_MODELS[1], "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "The upload to org/vift failed (OSError, HTTP 403: 403 Forbidden" in err and "hf auth login" in err
    assert "Traceback" not in err and TOKEN not in err


def test_token_goes_to_huggingface_hub_and_is_never_printed(published, monkeypatch, capsys, caplog):
    import huggingface_hub

    from hub.push_model import main

    RecordingApi.instances.clear()
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(publish_model, "verify_folder", lambda folder, timeout: {"model_class": "x", "new_tokens": 1})
    caplog.set_level(logging.DEBUG)
    assert main(["--checkpoint", published["checkpoint"], "--repo_id", "org/vift", "--base_model", BASE_MODELS[0],
                 BASE_MODELS[1], "--token", TOKEN]) == 0
    (api,) = RecordingApi.instances
    assert api.token == TOKEN and [c[0] for c in api.calls] == ["create_repo", "create_commit"]
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text


def test_large_folders_go_through_the_large_folder_upload(tmp_path, monkeypatch):
    monkeypatch.setattr(publish_upload, "LARGE_FOLDER_FILES", 1)
    files = [publish_upload.PlannedFile(name, 1, "checkpoint") for name in ("a.parquet", "b.parquet")]
    with_large = RecordingApi(with_large_folder=True)
    upload_to_hub(with_large, str(tmp_path), files, "org/data", "dataset", private=True, revision="v1")
    assert [c[0] for c in with_large.calls] == ["create_repo", "create_branch", "upload_large_folder"]
    assert with_large.calls[2][2] == {"repo_id": "org/data", "folder_path": str(tmp_path), "repo_type": "dataset",
                                      "revision": "v1", "private": True, "allow_patterns": ["a.parquet", "b.parquet"]}
    # huggingface_hub 2.x has no upload_large_folder: its upload_folder splits large uploads into several commits.
    without = RecordingApi()
    upload_to_hub(without, str(tmp_path), files, "org/data", "dataset", commit_message="msg")
    assert [c[0] for c in without.calls] == ["create_repo", "upload_folder"]
    assert without.calls[1][2]["allow_patterns"] == ["a.parquet", "b.parquet"]


# ----------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before anything is uploaded
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repo_id", ["vift", "org/team/vift", "org/vi ft", "-org/vift", "org/vift-", ""])
def test_repo_id_of_the_wrong_form_is_rejected(published, repo_id):
    api = RecordingApi()
    with pytest.raises(PublishError, match="namespace/name|not valid"):
        push_model(published["checkpoint"], repo_id, base_models=BASE_MODELS, api=api, log=lambda *a: None)
    assert api.calls == []


@pytest.mark.parametrize(
    "remove, message",
    [
        (["model.safetensors"], "no safetensors weights"),
        (["tokenizer.json"], "tokenizer files"),
        (["chat_template.jinja"], "a chat template"),
        (["processor_config.json"], "processor_config.json"),
        (["fusion_vift.py"], r"remote-code file\(s\) \['fusion_vift.py'\] are missing"),
        (["config.json"], "config.json"),
    ],
)
def test_incomplete_checkpoint_is_rejected_naming_what_is_missing(published, tmp_path, remove, message):
    checkpoint = shutil.copytree(published["checkpoint"], tmp_path / "ckpt")
    for name in remove:
        os.remove(checkpoint / name)
    api = RecordingApi()
    with pytest.raises(PublishError, match=message):
        push_model(str(checkpoint), "org/vift", base_models=BASE_MODELS, api=api, log=lambda *a: None)
    assert api.calls == []


@pytest.mark.parametrize("bad_import", ["import vift_package_users_do_not_have", "from modeling_vift.training import data"])
def test_remote_code_importing_what_users_lack_is_not_uploaded(published, tmp_path, bad_import):
    """Caught before the load check: a package missing here, or one present here that users do not have."""
    checkpoint = shutil.copytree(published["checkpoint"], tmp_path / "ckpt")
    code = (checkpoint / "modeling_vift.py").read_text()
    (checkpoint / "modeling_vift.py").write_text(bad_import + "\n" + code)
    api = RecordingApi()
    with pytest.raises(PublishError, match=r"would not import.*modeling_vift\.py imports"):
        push_model(str(checkpoint), "org/vift", base_models=BASE_MODELS, api=api, log=lambda *a: None)
    assert api.calls == []


def test_folder_that_fails_to_load_in_a_fresh_process_is_not_uploaded(published, tmp_path):
    checkpoint = shutil.copytree(published["checkpoint"], tmp_path / "ckpt")
    code = (checkpoint / "processing_vift.py").read_text()
    (checkpoint / "processing_vift.py").write_text(code + "\nraise RuntimeError('broken remote code')\n")
    api = RecordingApi()
    with pytest.raises(PublishError, match=r"(?s)does not load and generate.*broken remote code"):
        push_model(str(checkpoint), "org/vift", base_models=BASE_MODELS, api=api, log=lambda *a: None)
    assert api.calls == []


def test_missing_base_models_are_asked_for(published):
    with pytest.raises(PublishError, match="--base_model"):
        push_model(published["checkpoint"], "org/vift", api=RecordingApi(), log=lambda *a: None)
