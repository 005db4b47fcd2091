"""Model spec files and raw input folders for the command-line tests."""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np

CNN_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, image):
            x = torch.relu(self.bn(self.conv1(image)))
            x = torch.relu(self.conv2(x)) + x
            return self.fc(x.mean((2, 3)))

    def build():
        torch.manual_seed(0)
        return Net().eval(), torch.randn(1, 3, 12, 12)

    def only_model():
        return build()[0]
''')

TRANSFORMER_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, t, c))

    class TinyTransformer(nn.Module):
        """Token ids (int64) in, class logits out: embedding, one pre-norm encoder layer."""

        def __init__(self, vocab=50, dim=16, seq=8):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.1)
            self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, 2)
            self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 32), nn.Linear(32, dim)
            self.act = nn.GELU()
            self.head = nn.Linear(dim, 5)

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos
            x = x + self.attn(self.ln1(x))
            x = x + self.fc2(self.act(self.fc1(self.ln2(x))))
            return self.head(x.mean(dim=1))

    def build():
        torch.manual_seed(0)
        return TinyTransformer().eval(), torch.randint(0, 50, (1, 8))
''')


def write_spec(folder: pathlib.Path, name: str, source: str) -> pathlib.Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


def write_raw_folder(folder: pathlib.Path, shape: tuple[int, ...], count: int, seed: int = 0,
                     tokens: int | None = None) -> list[pathlib.Path]:
    """``count`` raw float32 files of ``shape`` (random normal, or token ids below
    ``tokens``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        value = (rng.integers(0, tokens, shape) if tokens is not None
                 else rng.standard_normal(shape))
        path = folder / f"{i:03d}.raw"
        value.astype("<f4").tofile(path)
        files.append(path)
    return files


def write_input_list(path: pathlib.Path, lines: list[str], header: str = "") -> pathlib.Path:
    path.write_text(header + "\n".join(lines) + "\n")
    return path
