"""OnnxEmbedder and the Haystack embedder components (real int8 MiniLM, no mocks)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ragconf.components.embedders import OnnxEmbedder, get_embedder
from ragconf.errors import SpecError

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A cheetah is running behind its prey.",
    "Aspirin reduces the risk of heart attacks in older adults.",
    "Low-dose acetylsalicylic acid lowers myocardial infarction risk in the elderly.",
    "The stock market closed higher on Friday.",
    "",
    "word " * 600,  # longer than max_length: truncated, not an error
]


@pytest.fixture(scope="module")
def emb() -> OnnxEmbedder:
    return OnnxEmbedder()


@pytest.fixture(scope="module")
def vecs(emb: OnnxEmbedder) -> np.ndarray:
    return emb.embed(TEXTS)


def test_shape_dtype_and_unit_norm(emb: OnnxEmbedder, vecs: np.ndarray) -> None:
    assert emb.dim == 384
    assert vecs.shape == (len(TEXTS), 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()


def test_empty_input(emb: OnnxEmbedder) -> None:
    out = emb.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_deterministic(emb: OnnxEmbedder, vecs: np.ndarray) -> None:
    np.testing.assert_array_equal(emb.embed(TEXTS), vecs)


def test_batch_size_and_order_invariance(vecs: np.ndarray) -> None:
    perm = np.random.RandomState(7).permutation(len(TEXTS))
    for bs in (1, 3, 64):
        out = OnnxEmbedder(batch_size=bs).embed([TEXTS[i] for i in perm])
        np.testing.assert_allclose(out, vecs[perm], atol=1e-5)


def test_semantic_sanity(vecs: np.ndarray) -> None:
    sim = vecs @ vecs.T
    # paraphrases are closer than unrelated sentences
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.4 and sim[0, 1] > sim[0, 6] + 0.4
    assert sim[4, 5] > 0.5 and sim[4, 5] > max(sim[4, 0], sim[4, 2], sim[4, 6]) + 0.3
    # reference: sentence-transformers all-MiniLM-L6-v2 (fp32) gives ~0.755 for this pair
    assert abs(sim[0, 1] - 0.755) < 0.03


def test_fingerprint_stable_and_files(emb: OnnxEmbedder) -> None:
    fp = emb.fingerprint()
    assert fp == OnnxEmbedder(batch_size=8, threads=1).fingerprint()
    assert fp["model_id"] == "minilm-int8"
    assert fp["sha256"] == "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
    assert len(fp["tokenizer_sha256"]) == 64
    assert OnnxEmbedder(max_length=128).fingerprint() != fp  # truncation changes vectors
    files = emb.model_files()
    assert [f.name for f in files] == ["model.onnx", "tokenizer.json"] and all(f.is_file() for f in files)


def test_unknown_model_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as info:
        OnnxEmbedder(model="minilm-int9")
    assert info.value.key == "embedder.model"
    assert "minilm-int8" in str(info.value)


def test_sentence_transformers_option_gives_install_hint() -> None:
    try:
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        e = get_embedder("minilm-st")
        with pytest.raises(SpecError, match="pip install torch"):
            e.embed(["x"])
    else:  # pragma: no cover - only where torch is installed
        v = get_embedder("minilm-st").embed(TEXTS[:2])
        np.testing.assert_allclose(v, OnnxEmbedder().embed(TEXTS[:2]), atol=0.05)


def test_import_is_cheap() -> None:
    code = (
        "import sys, ragconf.components.embedders as m; "
        "bad = [x for x in ('onnxruntime', 'tokenizers', 'haystack') if x in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_haystack_components_share_the_model() -> None:
    from haystack import Document, Pipeline

    from ragconf.components import embedders

    t1 = embedders.RagconfTextEmbedder()
    t2 = embedders.RagconfTextEmbedder(model="minilm-int8", batch_size=8)
    t1.warm_up()
    n_sessions = len(embedders._SESSIONS)
    t2.warm_up()
    assert len(embedders._SESSIONS) == n_sessions  # no reload for a second instance

    q = t1.run(text="aspirin and heart attacks")["embedding"]
    assert isinstance(q, list) and len(q) == 384 and all(isinstance(x, float) for x in q)

    docs = [
        Document(content="Aspirin reduces the risk of heart attacks.", meta={"title": "Aspirin"}),
        Document(content="The stock market closed higher on Friday."),
    ]
    de = embedders.RagconfDocumentEmbedder()
    out = de.run(documents=docs)["documents"]
    assert [d.id for d in out] == [d.id for d in docs]
    assert all(len(d.embedding) == 384 for d in out)
    expected = OnnxEmbedder().embed(
        ["Aspirin\nAspirin reduces the risk of heart attacks.", "The stock market closed higher on Friday."]
    )
    np.testing.assert_allclose(np.array([d.embedding for d in out]), expected, atol=1e-6)
    assert np.dot(q, out[0].embedding) > np.dot(q, out[1].embedding)

    p = Pipeline()
    p.add_component("embed", embedders.RagconfTextEmbedder())
    assert (
        p.run({"embed": {"text": "hello"}})["embed"]["embedding"][:3] == OnnxEmbedder().embed(["hello"])[0].tolist()[:3]
    )
