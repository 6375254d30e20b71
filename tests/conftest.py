"""Shared test setup: telemetry off, caches and databases in temporary folders, tiny GUE-layout data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("HARNESS_CACHE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"harness-test-cache-{os.getpid()}"))

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or a skip that says why (CI always has ../shared)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared holds the real GUE data and reference fixtures")
    return path


def write_split(path: Path, sequences, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sequence,label\n" + "".join(f"{s},{y}\n" for s, y in zip(sequences, labels)))


@pytest.fixture
def tiny_gue(tmp_path: Path) -> Path:
    """A GUE-layout root with two small tasks cut from the synthetic suite (fast to train on)."""
    from harness.synthetic import make_synthetic_task

    root = tmp_path / "gue"
    for name, sizes in (("synthetic/motif_binary", (160, 60, 60)), ("synthetic/motif_multiclass", (150, 60, 60))):
        task = make_synthetic_task(name)
        for split, n in zip(("train", "dev", "test"), sizes):
            data = task.split(split)
            write_split(root / "toy" / name.split("/")[1] / f"{split}.csv", data.sequences[:n], data.labels[:n])
    return root


def toy_splits(n: int = 128, seed: int = 0, lengths: tuple[int, int] | None = None):
    """A char tokenizer and tokenized train (n) and dev (n // 2) splits: random DNA (40 nt, or a length drawn
    from `lengths` per sequence) ending in a class motif, GGGGGGGG or AAAAAAAA."""
    from harness.data import Split
    from harness.tokenizers import CharTokenizer, tokenize

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    seqs = ["".join(rng.choice(list("ACGT"), 40 if lengths is None else rng.integers(*lengths)))
            + ("GGGGGGGG" if y else "AAAAAAAA") for y in labels]
    tok = CharTokenizer()
    return tok, tokenize(tok, Split(seqs, labels)), tokenize(tok, Split(seqs[:n // 2], labels[:n // 2]))


TINY_TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def tiny_dnabert2(tok, dropout: float = 0.0):
    """A two-layer DNABERT-2 classifier (2 classes) for `tok`, built through the model registry, seed 0."""
    import torch

    from harness.models import MODELS

    spec = MODELS.get("dnabert2")
    torch.manual_seed(0)
    return spec.classifier(spec.architecture(tok, TINY_TRANSFORMER), tok, 2, dropout)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder with its own MLflow and Optuna sqlite databases."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # MLflow keeps the last URI set in-process
    return tmp_path


TINY_STUDY = """
name: tiny
tasks: [toy/motif_binary]
budget: {n_trials: 3, max_epochs: 2, patience: 2, seeds: 2}
sampler: {seed: 0, n_startup_trials: 2}
pruner: {n_startup_trials: 5, n_warmup_steps: 1}
tokenizer: {bpe_vocab_size: 64}
search_spaces:
  transformer:
    lr: {type: float, low: 1.0e-3, high: 3.0e-3, log: true}
    batch_size: {type: categorical, choices: [16]}
    fixed: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 64}
  cnn:
    lr: {type: float, low: 2.0e-3, high: 5.0e-3, log: true}
    dropout: {type: float, low: 0.0, high: 0.2}
    batch_size: {type: categorical, choices: [16]}
    fixed: {hidden_dim: 32}   # ConvNova's width (the U-Net has a fixed size)
  kmer:
    k: {type: int, low: 3, high: 5}
    C: {type: float, low: 0.1, high: 10.0, log: true}
"""


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_STUDY)
    return path


def random_probs(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


# ---------------------------------------------------------------------------------- a real PostgreSQL
class PostgresServer:
    """A throwaway PostgreSQL on a loopback port (trust auth), run as the `postgres` user when we are root
    (initdb refuses root). `url` carries a password, so tests can check it never leaks (trust ignores it)."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import tempfile

        if not shutil.which("pg_config"):
            pytest.skip("PostgreSQL is not installed (.ci/run installs postgresql-15)")
        self.bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                          check=True).stdout.strip())
        if not (self.bindir / "pg_ctl").exists():
            pytest.skip(f"no pg_ctl in {self.bindir} (.ci/run installs postgresql-15)")
        self.folder = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.run("initdb", "-D", str(self.folder / "data"), "-U", "harness", "--auth=trust", "-E", "UTF8")
        self.start()
        self.url = self.database("studies")

    def database(self, name: str) -> str:
        """A new, empty database on this server; its URL (with a password that trust auth ignores)."""
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "harness", name)
        return f"postgresql+psycopg2://harness:s3cret-pw@127.0.0.1:{self.port}/{name}"

    def run(self, tool: str, *args: str) -> None:
        import subprocess

        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-o",
                 f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300", "start")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        import shutil

        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    server = PostgresServer()
    yield server
    server.remove()
