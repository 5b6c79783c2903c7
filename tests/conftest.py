"""Suite-wide JAX strictness and shared fixtures."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# No implicit promotion between dtypes (int32 with a float, float32 with float64): each is a cast
# written out. (optax's update traces under the standard rules: see `train.train_step`.)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)
