"""Final models as registered MLflow pyfunc models (harness/serving.py): logged from an arm's export with no
pickle, registered under a URI-safe name, loaded back with `models:/<name>/<version>`, they score raw DNA
strings exactly as the fitted arm in memory scores the same sequences; `save_models=best` keeps one; and
`mlflow models serve` serves one over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness import serving
from harness.arms import ARMS, Budget, RunOptions
from harness.runtime import CPU
from harness.tasks import load_task

# Tiny versions of each kind of arm: a char CNN, a BPE CNN (its tokenizer.json travels with it), and the two
# scikit-learn pipelines (a learnt k-mer vocabulary and idf; a learnt one-hot length).
ARM_CASES = {
    "unet_char": ("toy/motif_binary", {"lr": 3e-3, "batch_size": 32, "widths": [8, 16]}),
    "convnova_bpe": ("toy/motif_binary", {"lr": 3e-3, "batch_size": 32, "hidden_dim": 16, "num_conv1d": 2}),
    "kmer_logreg": ("toy/motif_multiclass", {"k": 4, "C": 1.0}),
    "onehot_logreg": ("toy/motif_binary", {"C": 0.5}),
}
# What changes the model for the negative control: the seed of a network, C of a logistic regression.
OTHER = {"unet_char": (1, {}), "convnova_bpe": (1, {}),
         "kmer_logreg": (0, {"C": 0.01}), "onehot_logreg": (0, {"C": 0.01})}
EXPORT_FILES = {"unet_char": {"config.json", "weights.safetensors"},
                "convnova_bpe": {"config.json", "weights.safetensors", "tokenizer.json"},
                "kmer_logreg": {"config.json", "weights.safetensors"},
                "onehot_logreg": {"config.json", "weights.safetensors"}}


@pytest.fixture
def registry(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh sqlite tracking store and registry (the workdir fixture), artifacts under it, caches too."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(workdir / "cache"))
    mlflow.set_experiment("serving")
    return workdir


def fit(data: Path, arm: str, seed: int = 0, **overrides):
    """The arm's tiny case fitted (two epochs) on its task of the tiny_gue fixture."""
    task_name, params = ARM_CASES[arm]
    task = load_task(task_name, str(data))
    fitted = ARMS.get(arm).fit(task, {**params, **overrides}, seed, Budget(2), RunOptions(CPU, bpe_vocab_size=64))
    return task, fitted


def log_and_register(fitted, task, name: str) -> tuple[str, mlflow.entities.model_registry.ModelVersion]:
    with mlflow.start_run() as run:
        info = serving.log_model(fitted, input_example=task.dev.sequences[:3])
    return run.info.run_id, serving.register(info.model_uri, name, tags={"arm": "test"})


def test_registered_model_names_map_what_the_registry_or_a_models_uri_cannot_hold():
    """`/` and `:` are refused by the registry, `@` starts an alias in models:/ URIs, `?` and `#` end its path (the
    round trip through a real registry and URI is in the next test)."""
    assert serving.registered_model_name("smoke", "unet_char", "synthetic/motif_binary") == \
        "smoke.unet_char.synthetic_motif_binary"
    # Fine-tuned from checkpoint 1a2b3c4d (`@` would start an alias in a models:/ URI) and its scratch twin:
    assert serving.registered_model_name("gue", "convnova_char@1a2b3c4d", "tf/0") == "gue.convnova_char-1a2b3c4d.tf_0"
    assert serving.registered_model_name("gue", "dnabert2_scratch~1a2b3c4d", "prom/prom_300_tata") == \
        "gue.dnabert2_scratch~1a2b3c4d.prom_prom_300_tata"
    assert serving.registered_model_name("my study:v2", "unet_char", "a/b?c#d") == "my-study-v2.unet_char.a_b-c-d"


@pytest.mark.parametrize("arm", list(ARM_CASES))
def test_registered_model_scores_raw_dna_as_the_fitted_arm(arm, registry, tiny_gue):
    task, fitted = fit(tiny_gue, arm)
    # A fine-tuned variant's name, so that the `@` mapping is exercised through models:/ URIs too.
    name = serving.registered_model_name("smoke", f"{arm}@1a2b3c4d", task.name)
    run_id, version = log_and_register(fitted, task, name)
    assert int(version.version) == 1 and version.tags == {"arm": "test"}
    assert serving.model_uri(serving.logged_model_id(MlflowClient().get_run(run_id))) == version.source

    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    expected = fitted.predict("test")  # the in-memory arm on the (normalised) test split
    raw = [s.lower() for s in task.test.sequences]  # raw input: lower case normalises to the same sequences
    served = model.predict(raw)
    assert list(served.columns) == [f"prob_{c}" for c in range(task.num_classes)]
    assert served.shape == (len(task.test), task.num_classes)
    np.testing.assert_allclose(served.to_numpy().sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served.to_numpy(), expected, rtol=0, atol=1e-6)
    # The three input forms give the same probabilities (a DataFrame is what `mlflow models serve` passes).
    frame = pd.DataFrame({"sequence": raw[:7]})
    for form in (pd.Series(raw[:7]), frame):
        np.testing.assert_allclose(model.predict(form).to_numpy(), served.to_numpy()[:7], rtol=0, atol=1e-6)

    # Negative control: another model (another seed, or another C) gives other probabilities, and registered as
    # version 2 it is what models:/<name>/2 serves, while version 1 is unchanged.
    seed, overrides = OTHER[arm]
    _, other = fit(tiny_gue, arm, seed, **overrides)
    assert not np.allclose(other.predict("test"), expected, atol=1e-3)
    log_and_register(other, task, name)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"models:/{name}/2").predict(raw).to_numpy(),
                               other.predict("test"), rtol=0, atol=1e-6)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"models:/{name}/1").predict(raw).to_numpy(), expected,
                               rtol=0, atol=1e-6)

    # No pickle anywhere: the model is this harness's code, safetensors arrays and JSON.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(registry / "download")))
    names = [p.name.lower() for p in folder.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib")) or "cloudpickle" in n]
    assert {p.name for p in (folder / "artifacts" / serving.EXPORT).iterdir()} == EXPORT_FILES[arm]
    assert (folder / "serving.py").is_file() and (folder / "code" / "harness" / "arms" / "base.py").is_file()
    flavor = mlflow.models.Model.load(str(folder)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    requirements = (folder / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in requirements and "scikit-learn==1.9.1" in requirements
    assert not any(r.startswith(("matplotlib", "transformers")) for r in requirements)  # training only


def test_bad_input_is_refused_with_its_row(registry, tiny_gue):
    task, fitted = fit(tiny_gue, "kmer_logreg")
    name = serving.registered_model_name("smoke", "kmer_logreg", task.name)
    log_and_register(fitted, task, name)
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    with pytest.raises(Exception, match=r"input row, line 2: character 'U' is not DNA"):
        model.predict(["ACGT", "ACGU"])
    assert model.predict(["ACGTRYACGT"]).shape == (1, 3)  # IUPAC codes read as N, as in task files
    # A missing value is not the string "nan" (which would read as N A N).
    with pytest.raises(Exception, match=r"input row 2: missing sequence"):
        model.predict(pd.DataFrame({"sequence": ["ACGT", np.nan]}))
    with pytest.raises(Exception, match=r"input row 1: missing sequence"):
        model.predict([None, "ACGT"])


def test_best_mode_finds_each_seeds_model_from_its_run_and_discards_the_unregistered(registry, tiny_gue):
    """What `save_models=best` does once every seed is done: find each final run's model (another process may
    have logged it), register one, discard the others; `mlflow gc` then frees the discarded models' files."""
    task, fitted = fit(tiny_gue, "kmer_logreg")
    client = MlflowClient()
    runs = []
    for _ in range(3):  # three "seeds" of one cell
        with mlflow.start_run() as run:
            serving.log_model(fitted, input_example=task.dev.sequences[:2])
        runs.append(client.get_run(run.info.run_id))
    with mlflow.start_run() as bare:  # a final run that logged no model (save_models=none)
        pass
    assert serving.logged_model_id(client.get_run(bare.info.run_id)) is None
    ids = [serving.logged_model_id(r) for r in runs]
    assert len(set(ids)) == 3 and all(i.startswith("m-") for i in ids)
    locations = [Path(client.get_logged_model(i).artifact_location) for i in ids]

    name = serving.registered_model_name("smoke", "kmer_logreg", task.name)
    version = serving.register(serving.model_uri(ids[1]), name, tags={"seed": "1"})
    assert version.source == f"models:/{ids[1]}" and version.tags == {"seed": "1"}
    for model_id in (ids[0], ids[2]):
        serving.discard(model_id)
    # Discarded models are no longer found, from their runs or by search; the registered one is.
    assert [serving.logged_model_id(r) for r in runs] == [None, ids[1], None]
    experiment = mlflow.get_experiment_by_name("serving").experiment_id
    assert [m.model_id for m in client.search_logged_models([experiment])] == [ids[1]]
    assert mlflow.pyfunc.load_model(f"models:/{name}/1").predict(task.test.sequences[:4]).shape == (4, 3)
    serving.discard(ids[0])  # discarding again is a no-op, not an error

    # Deleting only marked them; `mlflow gc` removes a discarded model's artifacts for good.
    assert all(location.is_dir() for location in locations)
    subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", mlflow.get_tracking_uri(),
                    "--logged-model-ids", ids[0]], check=True, capture_output=True, cwd=registry,
                   env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert not locations[0].exists() and locations[1].is_dir() and locations[2].is_dir()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_serves_a_registered_model(registry, tiny_gue):
    task, fitted = fit(tiny_gue, "convnova_bpe")
    name = serving.registered_model_name("smoke", "convnova_bpe", task.name)
    log_and_register(fitted, task, name)
    expected = fitted.predict("test")[:5]
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/1",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              cwd=registry, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the server did not answer /ping within 120 s"
                time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        for payload in ({"inputs": task.test.sequences[:5]},
                        {"dataframe_split": {"columns": ["sequence"], "data": [[s] for s in task.test.sequences[:5]]}}):
            rows = post(url, payload)["predictions"]
            probs = np.array([[row[f"prob_{c}"] for c in range(task.num_classes)] for row in rows])
            np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
        with pytest.raises(urllib.error.HTTPError):  # not DNA: an error answer, not probabilities
            post(url, {"inputs": ["ACGU"]})
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
