"""Loss values on hand-worked inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from cganjax import losses


def test_hinge_d_loss_hand_worked():
  # relu(1 - [2, 0.5]) = [0, 0.5] -> 0.25; relu(1 + [-2, 0]) = [0, 1] -> 0.5.
  real = jnp.array([2.0, 0.5])
  fake = jnp.array([-2.0, 0.0])
  assert float(losses.hinge_d_loss(real, fake)) == 0.75


def test_hinge_g_loss_hand_worked():
  assert float(losses.hinge_g_loss(jnp.array([1.0, -3.0]))) == 1.0


def test_attribute_loss_hand_worked():
  # -log sigmoid(0) = log 2; -log(1 - sigmoid(log 3)) = -log(1/4) = log 4.
  logits = jnp.array([[0.0, math.log(3.0)]])
  targets = jnp.array([[1.0, 0.0]])
  value = float(losses.attribute_loss(logits, targets))
  np.testing.assert_allclose(value, 3 * math.log(2.0), rtol=1e-6)


def test_attribute_loss_weights_and_strength_clip():
  logits = jnp.array([[0.0], [0.0]])
  weighted = losses.attribute_loss(
    logits, jnp.array([[1.0], [1.0]]), jnp.array([1.0, 0.0])
  )
  np.testing.assert_allclose(float(weighted), math.log(2.0) / 2, rtol=1e-6)
  strong = losses.attribute_loss(logits, jnp.array([[1.5], [1.5]]))
  plain = losses.attribute_loss(logits, jnp.array([[1.0], [1.0]]))
  assert float(strong) == float(plain)


def test_attribute_loss_saturated_logits_finite():
  logits = jnp.array([[100.0, -100.0]])
  targets = jnp.array([[0.0, 1.0]])
  value, grad = jax.value_and_grad(lambda x: losses.attribute_loss(x, targets))(
    logits
  )
  np.testing.assert_allclose(float(value), 200.0, rtol=1e-6)
  assert np.all(np.isfinite(grad))


def test_masked_l1_hand_worked():
  prediction = jnp.zeros((1, 2, 2, 1))
  target = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  mask = jnp.array([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 2, 2, 1)
  # (|0 - 1| + |0 - 3|) / 2 pixels = 2.
  assert float(losses.masked_l1_loss(prediction, target, mask)) == 2.0


def test_masked_l1_channels_and_empty_mask():
  prediction = jnp.zeros((2, 2, 2, 3))
  target = jnp.ones((2, 2, 2, 3))
  mask = jnp.stack([jnp.ones((2, 2, 1)), jnp.zeros((2, 2, 1))])
  # Example 0: mean L1 of 1 inside its mask; example 1: empty mask gives 0.
  assert float(losses.masked_l1_loss(prediction, target, mask)) == 0.5
  weighted = losses.masked_l1_loss(
    prediction, target, mask, jnp.array([0.0, 1.0])
  )
  assert float(weighted) == 0.0
