"""The torch module built from a :class:`~propagate.spec.NetworkSpec` (see ``build_model``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from propagate.spec import NetworkSpec


class MLP(nn.Module):
    """Fully connected network of a spec, seed placement of BatchNormalization.

    ``linears[l-1]`` is hidden layer ``l``; ``norms[l-1]`` normalizes its input
    (``Identity`` for ``l = 1`` or without BN); ``readout`` (optional) maps the
    last hidden layer to logits, with ``readout_norm`` before it.
    """

    def __init__(self, spec: NetworkSpec, seed: int | None = 0, dtype=None, device=None):
        super().__init__()
        self.spec = spec
        dtype = dtype or torch.float32
        gen = torch.Generator(device="cpu")
        if seed is not None:
            gen.manual_seed(int(seed))
        else:
            gen.seed()
        init = spec.initializer
        bias_var = spec.bias_var
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i, (fan_in, fan_out) in enumerate(spec.fans()):
            lin = nn.Linear(fan_in, fan_out, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(init.sample(fan_out, fan_in, generator=gen, dtype=dtype))
                lin.bias.copy_(init.sample_bias(fan_out, fan_in, generator=gen, dtype=dtype, bias_var=bias_var))
            self.linears.append(lin)
            self.norms.append(self._bn(fan_in, dtype) if (spec.batchnorm and i > 0) else nn.Identity())
        self.act = spec.act.torch_module()
        if spec.alpha_dropout:
            self.drop = nn.AlphaDropout(spec.alpha_dropout)
        elif spec.dropout:
            self.drop = nn.Dropout(spec.dropout)
        else:
            self.drop = nn.Identity()
        self.readout = None
        self.readout_norm = nn.Identity()
        if spec.out_features:
            last = spec.widths[-1]
            self.readout = nn.Linear(last, spec.out_features, dtype=dtype)
            with torch.no_grad():
                self.readout.weight.copy_(init.sample(spec.out_features, last, generator=gen, dtype=dtype))
                self.readout.bias.copy_(
                    init.sample_bias(spec.out_features, last, generator=gen, dtype=dtype, bias_var=bias_var)
                )
            if spec.batchnorm:
                self.readout_norm = self._bn(last, dtype)
        if device is not None:
            self.to(device)

    def _bn(self, n, dtype):
        # Keras BatchNormalization(momentum=0.99, epsilon=1e-3) == torch momentum 0.01, eps 1e-3
        return nn.BatchNorm1d(n, eps=self.spec.bn_eps, momentum=self.spec.bn_momentum, dtype=dtype)

    def forward(self, x, record: bool = False):
        x = x.flatten(1)
        pre = []
        for norm, lin in zip(self.norms, self.linears):
            h = lin(norm(x))
            if record:
                pre.append(h)
            x = self.drop(self.act(h))
        if self.readout is not None:
            x = self.readout(self.readout_norm(x))
        return (x, pre) if record else x
