"""The bring-your-own example of the workflow (``config/transformer.yaml``): a model
factory and a dataset factory, named in the config by import path
(``hspec.pipeline.examples:tiny_transformer``, ``hspec.pipeline.examples:token_data``),
exactly as a researcher's own package would be (:mod:`hspec.pipeline.factories` has the
contracts). A template: copy it into your package and change the two functions.
"""

from torch import Tensor, nn

from hspec.errors import HspecError
from hspec.pipeline.transformer import TinyCausalLM, synthetic_tokens

VOCAB_SIZE = 16
CONTEXT = 8
# examples and seed of each split: disjoint draws of the same rule
SPLITS = {"train": (256, 0), "test": (128, 1)}


def token_data(split: str) -> tuple[Tensor, Tensor]:
    """A dataset factory: (token ids (N, 8), next-token labels (N, 8), the last -100) of
    counting sequences modulo 16 (:func:`hspec.pipeline.transformer.synthetic_tokens`)."""
    if split not in SPLITS:
        raise HspecError(f"token_data: unknown split {split!r}")
    examples, seed = SPLITS[split]
    batch = synthetic_tokens(examples, CONTEXT, VOCAB_SIZE, seed)
    return batch["input_ids"], batch["labels"]


def tiny_transformer() -> nn.Module:
    """A model factory: a one-block causal LM of width 16 (3,952 parameters), ids (B, T)
    to logits (B, T, 16); its weights come from the seed hspec sets before the call."""
    return TinyCausalLM(vocab_size=VOCAB_SIZE, context=CONTEXT, width=16, heads=2, layers=1)
