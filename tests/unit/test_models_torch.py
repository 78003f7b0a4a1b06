"""PyTorch front end: nn.Module with example inputs and torch.export programs."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from aivmm.errors import ConfigError, InputError  # noqa: E402
from aivmm.models import Category, ModelFormat, load  # noqa: E402


class Crnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gru = nn.GRU(8 * 16, 16, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(image))))
        y, _ = self.gru(x.permute(0, 3, 1, 2).flatten(2))
        return self.fc(y)


class Decoder(nn.Module):
    """A tiny causal LM: tril buffer, masked_fill, MatMul -> Softmax -> MatMul."""

    def __init__(self, vocab: int = 50, width: int = 16, seq: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.register_buffer("mask", torch.tril(torch.ones(seq, seq, dtype=torch.bool)))
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = (q @ k.transpose(-1, -2)).masked_fill(~self.mask, float("-inf"))
        return self.head(torch.softmax(scores, dim=-1) @ v)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.enc(self.emb(input_ids))


class Recommender(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.users = nn.EmbeddingBag(1000, 8, mode="sum")
        self.items = nn.EmbeddingBag(500, 8, mode="sum")
        self.mlp = nn.Sequential(nn.Linear(16 + 4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, dense: torch.Tensor, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.users(user), self.items(item), dense], dim=1))


class Pinn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 16), nn.Linear(16, 16), nn.Linear(16, 1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.sin(self.a(coords)))))


class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, dtype=torch.cfloat))

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        f = torch.fft.rfft(signal)[..., :8] * self.w
        return torch.fft.irfft(f, n=signal.shape[-1])


def test_module_signature_parameters_and_flops() -> None:
    model = Crnn()
    spec = load(model, example_inputs=torch.randn(2, 1, 16, 32))
    assert spec.format is ModelFormat.TORCH_MODULE and spec.name == "Crnn" and spec.source is model
    assert [t.describe() for t in spec.inputs] == ["image: float32[batch, 1, 16, 32]"]
    assert spec.outputs[0].shape == ("batch", 32, 5)
    assert spec.parameters == sum(p.numel() for p in model.parameters())
    assert spec.parameter_bytes == 4 * spec.parameters
    conv_macs = 2 * 16 * 32 * (8 * 9 * 1 + 8 * 9 * 8)
    assert spec.per_operator_flops["aten.convolution"] == 2 * conv_macs
    assert {c.category for c in spec.categories} == {Category.CNN, Category.RNN}
    assert spec.batch_dim == 0 and spec.peak_activation_bytes > 0
    assert model.training  # analysis put it in eval mode and back


def test_shapes_rebind_the_batch() -> None:
    model = Crnn()
    two = load(model, example_inputs=torch.randn(2, 1, 16, 32))
    six = load(model, example_inputs=torch.randn(2, 1, 16, 32), shapes={"image": (6, 1, 16, 32)})
    assert six.shapes_used == {"image": (6, 1, 16, 32)} and six.flops == 3 * two.flops
    with pytest.raises(InputError, match="rank"):
        load(model, example_inputs=torch.randn(2, 1, 16, 32), shapes={"image": (6, 16, 32)})
    with pytest.raises(InputError, match="fixed to 16"):
        load(model, example_inputs=torch.randn(2, 1, 16, 32), shapes={"image": (6, 1, 8, 32)})


def test_exported_program_keeps_dynamic_dims_symbolic() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            Crnn(), (torch.randn(2, 1, 16, 32),), dynamic_shapes={"image": {0: torch.export.Dim("batch")}}
        )
    spec = load(program)
    assert spec.format is ModelFormat.TORCH_EXPORTED
    assert isinstance(spec.inputs[0].shape[0], str) and spec.inputs[0].shape[1:] == (1, 16, 32)
    assert spec.batch_dim == 0 and spec.parameters == sum(p.numel() for p in Crnn().parameters())
    assert {c.category for c in spec.categories} == {Category.CNN, Category.RNN}
    assert load(program, shapes={"image": (4, 1, 16, 32)}).flops == 2 * spec.flops


def test_causal_decoder() -> None:
    spec = load(Decoder(), example_inputs=torch.randint(0, 50, (2, 8)))
    top = spec.categories[0]
    assert top.category is Category.TRANSFORMER and top.subtype == "causal-decoder-llm"
    assert any("triangular buffer 'mask'" in e for e in top.evidence)
    attention_macs = 2 * 2 * 8 * 8 * 16  # QK^T and AV
    assert spec.per_operator_flops.get("aten.bmm", 0) == 2 * attention_macs


def test_encoder() -> None:
    spec = load(Encoder(), example_inputs=(torch.randint(0, 100, (2, 10)),))
    assert spec.categories[0].subtype == "encoder-llm"


def test_recommender_scientific_and_spectral() -> None:
    rec = load(
        Recommender(), example_inputs=(torch.randn(3, 4), torch.randint(0, 500, (3, 5)), torch.randint(0, 500, (3, 2)))
    )
    assert rec.primary_category is Category.RECOMMENDER and [t.name for t in rec.inputs] == ["dense", "user", "item"]
    pinn = load(Pinn(), example_inputs=torch.rand(16, 2))
    assert pinn.primary_category is Category.SCIENTIFIC
    fft = load(Spectral(), example_inputs=torch.randn(2, 64))
    assert fft.primary_category is Category.SCIENTIFIC and "spectral" in fft.categories[0].evidence[0]


def test_keyword_inputs_and_hash_detects_changed_weights() -> None:
    model = Pinn()
    first = load(model, example_inputs={"coords": torch.rand(4, 2)})
    assert [t.name for t in first.inputs] == ["coords"]
    with torch.no_grad():
        model.a.weight.add_(1.0)
    assert load(model, example_inputs={"coords": torch.rand(4, 2)}).sha256 != first.sha256


def test_bad_torch_input() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        load(Pinn())
    with pytest.raises(ConfigError, match=r"torch\.Tensor"):
        load(Pinn(), example_inputs=([1.0, 2.0],))
    with pytest.raises(ConfigError, match="tensor, a tuple"):
        load(Pinn(), example_inputs=3.0)
    with pytest.raises(InputError, match="failed on the example inputs"):
        load(Pinn(), example_inputs=torch.rand(4, 3))


@pytest.mark.gpu
def test_module_on_cuda_matches_cpu_analysis() -> None:
    model = Crnn()
    cpu = load(model, example_inputs=torch.randn(2, 1, 16, 32))
    gpu = load(model.cuda(), example_inputs=torch.randn(2, 1, 16, 32, device="cuda"))
    assert gpu.parameters == cpu.parameters and gpu.sha256 == cpu.sha256
    assert gpu.per_operator_flops["aten.convolution"] == cpu.per_operator_flops["aten.convolution"]
    assert {c.category for c in gpu.categories} == {Category.CNN, Category.RNN}
