"""A forward on a (data=2, fsdp=2, tensor=2) mesh of 8 simulated CPU devices equals one device."""
import os
import subprocess
import sys
import textwrap

import pytest

from rlaif_jax.sharding import mesh as mesh_lib

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from rlaif_jax.models import checkpoint_bridge, config as config_lib, positions_from_mask, Decoder
    from rlaif_jax.sharding import mesh as mesh_lib
    assert jax.device_count() == 8, jax.devices()
    cfg = config_lib.tiny(vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=False)
    single = Decoder(cfg, rngs=nnx.Rngs(7))
    mesh = mesh_lib.make_mesh((2, 2, 2))
    sharded = checkpoint_bridge.init_sharded(cfg, mesh, seed=7)
    # Same init on both paths (jit may fuse the init scale differently: compare to 1 ulp-ish).
    for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(single)), nnx.to_flat_state(nnx.state(sharded))):
      np.testing.assert_allclose(np.asarray(a.get_value()), np.asarray(b.get_value()), atol=1e-7, err_msg=str(p))
    # Compare forwards on identical weights: place the single-device weights on the mesh.
    graphdef, state = nnx.split(single)
    sharded = nnx.merge(graphdef, jax.device_put(state, mesh_lib.state_shardings(state, mesh)))
    expect = {
        "embed": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"),
        "layers.0.attn.wq": P("fsdp", "tensor", None), "layers.0.attn.wk": P("fsdp", "tensor", None),
        "layers.0.attn.wo": P("tensor", None, "fsdp"), "layers.0.mlp.w_up": P("fsdp", "tensor"),
        "layers.0.mlp.w_down": P("tensor", "fsdp"), "final_norm.scale": P(None),
    }
    got = {".".join(map(str, p)): v.get_value().sharding.spec
           for p, v in nnx.to_flat_state(nnx.state(sharded))}
    for k, spec in expect.items():
      assert got[k] == spec, (k, got[k], spec)
    tokens = np.random.RandomState(0).randint(0, 96, (4, 12)).astype(np.int32)
    mask = np.ones_like(tokens, dtype=bool); mask[1, :5] = False
    ref = np.asarray(single(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))[0])
    ds = mesh_lib.data_sharding(mesh, 2)
    with jax.set_mesh(mesh):
      t, m = jax.device_put(tokens, ds), jax.device_put(mask, ds)
      fwd = jax.jit(lambda mdl, t, m: mdl(t, positions_from_mask(m), m)[0])
      out = fwd(sharded, t, m)
    assert out.sharding.spec[0] == ("data", "fsdp"), out.sharding
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
    # Stacked layers on the mesh: the layer axis stays whole, the rest shards as before; the
    # scanned forward, its gradient and the sampler (which unstacks once per call) all run
    # sharded and match the single-device unrolled model.
    from rlaif_jax.sampling.logits_processing import SamplingParams
    from rlaif_jax.sampling.sampler import Sampler
    scfg = cfg.replace(scan_layers=True, remat=True)
    scanned = checkpoint_bridge.init_sharded(scfg, mesh, seed=7)
    spec = scanned.layers.attn.wq.get_value().sharding.spec
    assert spec == P(None, "fsdp", "tensor", None), spec
    for i in range(cfg.num_layers):
      np.testing.assert_allclose(np.asarray(scanned.layers.mlp.w_up.get_value()[i]),
                                 np.asarray(single.layers[i].mlp.w_up.get_value()), atol=1e-7)
    with jax.set_mesh(mesh):
      out = fwd(scanned, t, m)
      loss = lambda mdl: jnp.mean(mdl(t, positions_from_mask(m), m)[0] ** 2)
      g = jax.jit(jax.grad(loss))(scanned)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)
    g_ref = jax.grad(lambda mdl: jnp.mean(mdl(jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask))[0] ** 2))(single)
    np.testing.assert_allclose(np.asarray(g.layers.mlp.w_down.get_value()[1]),
                               np.asarray(g_ref.layers[1].mlp.w_down.get_value()), atol=1e-6)
    # Splash attention (TPU kernel, interpret mode on CPU) runs per shard in shard_map: rows over
    # (data, fsdp), heads over tensor; same forward and gradient as the single device.
    splash = checkpoint_bridge.init_sharded(scfg.replace(attention_impl="splash"), mesh, seed=7)
    # (Padded queries attend differently by design, so the loss reads real positions only.)
    real_loss = lambda mdl, t, m: jnp.mean(jnp.where(m[..., None], mdl(t, positions_from_mask(m), m)[0], 0) ** 2)
    with jax.set_mesh(mesh):
      out = fwd(splash, t, m)
      g = jax.jit(jax.grad(real_loss))(splash, t, m)
    np.testing.assert_allclose(np.asarray(out)[mask], ref[mask], atol=1e-5, rtol=0)
    g_real = jax.grad(real_loss)(single, jnp.asarray(tokens), jnp.asarray(mask))
    for i in range(cfg.num_layers):
      np.testing.assert_allclose(np.asarray(g.layers.attn.wk.get_value()[i]),
                                 np.asarray(g_real.layers[i].attn.wk.get_value()), atol=1e-6)
    prompts, pmask = tokens[:, :8], mask[:, :8]
    want = Sampler(single).generate_ids(None, prompts, pmask, 6, SamplingParams.greedy(), stop_ids=())
    got_ids = Sampler(scanned, mesh=mesh).generate_ids(None, prompts, pmask, 6, SamplingParams.greedy(),
                                                      stop_ids=())
    np.testing.assert_array_equal(np.asarray(got_ids.tokens), np.asarray(want.tokens))
    # A HF directory loaded straight into stacked, sharded parameters (each device reads its
    # slice of layers and of the weight) holds the single model's weights.
    import tempfile
    with tempfile.TemporaryDirectory() as d:
      checkpoint_bridge.export_hf_checkpoint(single, d)
      loaded = checkpoint_bridge.load_hf_checkpoint(d, mesh, scan_layers=True)
    w = loaded.layers.attn.wo.get_value()
    assert w.sharding.spec == P(None, "tensor", None, "fsdp"), w.sharding
    for i in range(cfg.num_layers):
      np.testing.assert_array_equal(np.asarray(w[i]), np.asarray(single.layers[i].attn.wo.get_value()))
      np.testing.assert_array_equal(np.asarray(loaded.layers.mlp.w_gate.get_value()[i]),
                                    np.asarray(single.layers[i].mlp.w_gate.get_value()))
    print("MESH_OK")
""")


def test_forward_on_8_device_mesh_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "MESH_OK" in proc.stdout, proc.stderr[-4000:]


def test_mesh_shapes():
  import jax
  n = jax.device_count()
  assert mesh_lib.make_mesh((1, -1, 1)).shape == {"data": 1, "fsdp": n, "tensor": 1}
  with pytest.raises(ValueError, match="needs"):
    mesh_lib.make_mesh((n + 1, 1, 1))
  with pytest.raises(ValueError, match="at most one"):
    mesh_lib.make_mesh((-1, -1, 1))


def test_logical_rules():
  from jax.sharding import PartitionSpec as P
  assert mesh_lib.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  assert mesh_lib.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  with pytest.raises(KeyError, match="no rule"):
    mesh_lib.logical_to_spec(("nonsense",))
