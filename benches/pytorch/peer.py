"""PyTorch's side of `benches/versus_pytorch.rs`.

Reads one JSON command per line on stdin and answers one JSON line on
stdout, so the Rust benchmark can interleave rounds with mlq without paying
Python's start-up each time. Every job runs on one thread, as the mlq
worker it is compared with does.

Commands:
  {"cmd": "make_model", "out": PATH}
      Traces the image benchmark's CNN (a ResNet-style network for 224×224
      RGB input, ten classes) and saves it with torch.jit.save.
  {"cmd": "image_forward", "model": PATH, "batches": N, "batch": 32}
      Forward passes of random batches, as torch.jit.load and
      torch.inference_mode run them; seconds spent.
  {"cmd": "image_predict", "model": PATH, "dir": DIR, "batch": 32}
      Every PNG in DIR decoded (Pillow), resized to 224×224, normalised,
      batched and classified; seconds from the first file read to the last
      result.
  {"cmd": "tabular_train", "csv": PATH, "target": NAME, "hidden": [..],
   "batch": 32, "lr": 0.01, "epochs": E, "out": PATH}
      mlq's train on a CSV, in PyTorch eager: parse, standardise, one-hot
      the target, an MLP of the same layers trained with Adam in shuffled
      batches; the weights saved. Seconds, parsing included.
  {"cmd": "tabular_predict", "csv": PATH, "model": PATH, "out": PATH}
      The trained MLP over a CSV: parse, standardise, forward in chunks,
      softmax, and predictions written as CSV. Seconds, parsing included.
"""

import json
import os
import sys
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

torch.set_num_threads(1)
torch.set_num_interop_threads(1)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.skip(x))


class Net(nn.Module):
    """ResNet-style, narrower than ResNet-18 so one thread runs it in
    benchmark time: a 7×7 stem, four stages of two blocks."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, cin = [], 32
        for cout, stride in [(32, 1), (64, 2), (128, 2), (256, 2)]:
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_model(out):
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, 224, 224))
    torch.jit.save(traced, out)
    return {}


_models = {}


def load(path):
    if path not in _models:
        m = torch.jit.load(path)
        m.eval()
        _models[path] = m
    return _models[path]


def image_forward(model, batches, batch=32):
    m = load(model)
    x = torch.rand(batch, 3, 224, 224)
    with torch.inference_mode():
        m(x)  # warm-up, as mlq's side has one
        start = time.perf_counter()
        for _ in range(batches):
            m(x)
        return {"seconds": time.perf_counter() - start, "images": batches * batch}


def image_predict(model, dir, batch=32):
    from PIL import Image

    m = load(model)
    files = sorted(f for f in os.listdir(dir) if f.endswith(".png"))
    start = time.perf_counter()
    tops = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            arrays = []
            for f in files[i : i + batch]:
                img = Image.open(os.path.join(dir, f)).convert("RGB").resize((224, 224), Image.BILINEAR)
                arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            x = (x - 0.5) / 0.25
            p = torch.softmax(m(x), 1)
            tops.append(torch.topk(p, 5, 1))
    return {"seconds": time.perf_counter() - start, "images": len(files)}


def tabular_train(csv, target, hidden, batch, lr, epochs, out):
    start = time.perf_counter()
    df = pd.read_csv(csv)
    y_text = df.pop(target)
    classes = sorted(y_text.unique())
    y = torch.from_numpy(pd.Categorical(y_text, categories=classes).codes.astype(np.int64))
    x = torch.from_numpy(df.to_numpy(dtype=np.float32))
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
    x = (x - mean) / std
    layers, width = [], x.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, len(classes)))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n)
        total = 0.0
        for s in range(0, n, batch):
            idx = order[s : s + batch]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    torch.save({"net": net.state_dict(), "mean": mean, "std": std, "classes": classes, "hidden": hidden}, out)
    return {"seconds": time.perf_counter() - start, "rows": n * epochs, "loss": total / n}


def tabular_predict(csv, model, out, chunk=8192):
    start = time.perf_counter()
    saved = torch.load(model, weights_only=False)
    df = pd.read_csv(csv)
    x = torch.from_numpy(df.to_numpy(dtype=np.float32))
    x = (x - saved["mean"]) / saved["std"]
    layers, width = [], x.shape[1]
    for h in saved["hidden"]:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, len(saved["classes"])))
    net.load_state_dict(saved["net"])
    classes = np.array(saved["classes"])
    with torch.inference_mode(), open(out, "w") as f:
        f.write("row,prediction," + ",".join(f"p_{c}" for c in classes) + "\n")
        for s in range(0, x.shape[0], chunk):
            p = torch.softmax(net(x[s : s + chunk]), 1).numpy()
            rows = pd.DataFrame(p, columns=[f"p_{c}" for c in classes])
            rows.insert(0, "prediction", classes[p.argmax(1)])
            rows.insert(0, "row", np.arange(s + 1, s + 1 + len(p)))
            rows.to_csv(f, header=False, index=False)
    return {"seconds": time.perf_counter() - start, "rows": x.shape[0]}


def main():
    for line in sys.stdin:
        args = json.loads(line)
        cmd = args.pop("cmd")
        answer = globals()[cmd](**args)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
