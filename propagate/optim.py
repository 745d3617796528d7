"""The one optimizer factory: training (:mod:`propagate.train`) and first-epoch dynamics (:mod:`propagate.trainability`)."""

from __future__ import annotations

from propagate.kernels import rmsprop

__all__ = ["make_optimizer", "OPTIMIZERS"]

#: The optimizers :func:`make_optimizer` builds (``options.optimizer``).
OPTIMIZERS = ("rmsprop", "adam", "sgd")


def make_optimizer(params, options, members: int = 1):
    """The optimizer ``options.optimizer`` over ``params``, with the lecture demo's Keras settings.

    ``options``: a :class:`propagate.train.TrainOptions` (``optimizer``, ``lr``,
    ``rho``, ``eps``, ``momentum``).

    - ``rmsprop``: Keras' RMSprop (``v = rho v + (1 - rho) g^2``,
      ``p -= lr g / (sqrt(v) + eps)``, eps outside the root), torch's RMSprop in
      one fused pass on CPU (:func:`propagate.kernels.rmsprop`);
    - ``adam``: ``torch.optim.Adam``, betas ``(0.9, 0.999)``, ``eps``;
    - ``sgd``: ``torch.optim.SGD`` with heavy-ball ``momentum``.

    All three are elementwise, so on parameters stacked over seeds each seed
    gets its single run's update; ``members`` (the number of seeds stacked on
    the parameters' first dimension) makes RMSprop's bit for bit the same
    wherever a seed sits in the stack (:func:`propagate.kernels.rmsprop`).
    Adam and SGD (torch's own, over whole stacked tensors) are equal to float32
    round-off: a member's last entries may fall in a kernel's scalar tail in
    one stack and not in another.
    """
    import torch

    if options.optimizer == "rmsprop":
        return rmsprop(params, lr=options.lr, rho=options.rho, eps=options.eps, members=members)
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=options.lr, betas=(0.9, 0.999), eps=options.eps)
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum)
