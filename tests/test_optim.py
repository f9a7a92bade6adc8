"""prefopt.optim: group rules, every optimizer trains and resumes exactly, state accounting,
wrapped optimizers against from-scratch references, clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch
from torch import nn

from prefopt.optim import (
    OPTIMIZERS,
    OptimConfig,
    available_optimizers,
    build_optimizer,
    needs_create_graph,
    optimizer_state_bytes,
    param_groups,
)

ALL = sorted(OPTIMIZERS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# learning rates at which each optimizer visibly fits a fixed batch in a few steps
LR = {
    "adamw": 1e-2, "adamw_8bit": 1e-2, "galore_adamw": 1e-2, "apollo": 1e-2, "apollo_mini": 1e-2,
    "lion": 3e-3, "lion_8bit": 3e-3, "muon": 1e-2, "adafactor": 3e-2, "sophia": 0.5, "sgd_sai": 1e-2,
}
# small ranks/gaps so that, in the 3 + 3 step resume test, steps after the resume both reuse the
# saved projection and draw a new one (GaLore refreshes at t = 1, gap, 2gap..; APOLLO at t = 1,
# gap + 1, 2gap + 1..; Sophia estimates the Hessian at t = 1, k + 1, ..); small tensors quantized
OPTIONS = {
    "adamw_8bit": {"min_8bit_size": 64},
    "lion_8bit": {"min_8bit_size": 64},
    "galore_adamw": {"rank": 8, "update_proj_gap": 3},
    "apollo": {"rank": 8, "update_proj_gap": 2},
    "apollo_mini": {"update_proj_gap": 2},
    "sophia": {"update_period": 2},
}


def installed(name: str):
    """``name`` as a pytest param, skipped when its library is not installed."""
    missing = OPTIMIZERS[name].missing_requirements()
    return pytest.param(name, marks=pytest.mark.skipif(bool(missing), reason=f"needs {missing}"))


INSTALLED = [installed(n) for n in ALL]


def requires(*names: str):
    missing = [m for n in names for m in OPTIMIZERS[n].missing_requirements()]
    return pytest.mark.skipif(bool(missing), reason=f"needs {missing}")


def test_registry_and_config_fields():
    assert "adamw" in available_optimizers() and set(available_optimizers()) <= set(OPTIMIZERS)
    assert set(LR) == set(OPTIMIZERS)
    for f in dataclasses.fields(OptimConfig):
        assert f.metadata.get("help"), f.name


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def tiny_llama(seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=tie,
        attn_implementation="eager",  # has double backward (sophia's Hessian-vector products)
    )
    return LlamaForCausalLM(cfg).eval()  # no dropout: runs are deterministic


BATCH = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))


def lm_loss(model) -> torch.Tensor:
    return model(input_ids=BATCH, labels=BATCH).loss


def train(model, opt, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = lm_loss(model)
        opt.zero_grad(set_to_none=True)
        loss.backward(create_graph=needs_create_graph(opt))
        opt.step()
        losses.append(loss.item())
    opt.zero_grad(set_to_none=True)
    return losses


def cfg_for(name: str, **kw) -> OptimConfig:
    return OptimConfig(name=name, lr=LR[name], weight_decay=0.01, options=dict(OPTIONS.get(name, {})), **kw)


class Toy(nn.Module):
    """Embedding, biased Linear, LayerNorm, Linear head (tied to nothing)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 16, bias=False)

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        return self.head(self.norm(torch.tanh(self.proj(self.emb(x)))))


# ---------------------------------------------------------------------------
# parameter groups
# ---------------------------------------------------------------------------
def _kinds(groups):
    return {g["kind"]: (set(g["param_names"]), g["weight_decay"]) for g in groups}


def test_param_groups_llama():
    model = tiny_llama()
    kinds = _kinds(param_groups(model, 0.1))
    assert set(kinds) == {"matrix", "embedding", "no_decay"}
    assert kinds["embedding"] == ({"model.embed_tokens.weight", "lm_head.weight"}, 0.1)
    names, wd = kinds["matrix"]
    assert wd == 0.1 and len(names) == 2 * 7
    assert all(n.endswith(("_proj.weight",)) for n in names)
    names, wd = kinds["no_decay"]
    assert wd == 0.0 and all("norm" in n for n in names)
    n_groups = sum(len(g["params"]) for g in param_groups(model, 0.1))
    assert n_groups == len(list(model.parameters()))


def test_param_groups_tied_head_counted_once_as_embedding():
    model = tiny_llama(tie=True)
    groups = param_groups(model, 0.0)
    emb = [g for g in groups if g["kind"] == "embedding"][0]
    assert len(emb["params"]) == 1 and emb["params"][0] is model.lm_head.weight
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_param_groups_plain_module_and_frozen_params():
    model = Toy()
    kinds = _kinds(param_groups(model, 0.5))
    assert kinds["embedding"] == ({"emb.weight", "head.weight"}, 0.5)
    assert kinds["matrix"] == ({"proj.weight"}, 0.5)
    assert kinds["no_decay"] == ({"proj.bias", "norm.weight", "norm.bias"}, 0.0)
    model.proj.requires_grad_(False)
    kinds = _kinds(param_groups(model, 0.5))
    assert "matrix" not in kinds and kinds["no_decay"][0] == {"norm.weight", "norm.bias"}


def test_lora_only_adapters_are_optimized():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    groups = param_groups(model, 0.0)
    assert [g["kind"] for g in groups] == ["matrix"]
    assert all("lora_" in n for n in groups[0]["param_names"]) and len(groups[0]["params"]) == 8
    opt = build_optimizer(model, cfg_for("galore_adamw"))
    train(model, opt, 2)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(map(id, opt.state)) <= trainable and len(opt.state) == 8


# ---------------------------------------------------------------------------
# every optimizer: trains, resumes bit-exactly
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", INSTALLED)
def test_optimizer_lowers_loss(name):
    model = tiny_llama()
    opt = build_optimizer(model, cfg_for(name))
    losses = train(model, opt, 8)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.95 * losses[0], losses
    assert optimizer_state_bytes(opt) > 0


@pytest.mark.parametrize("name", INSTALLED)
def test_exact_resume(name, tmp_path):
    cfg = cfg_for(name)
    straight = tiny_llama()
    opt = build_optimizer(straight, cfg)
    train(straight, opt, 6)

    first = tiny_llama()
    opt = build_optimizer(first, cfg)
    train(first, opt, 3)
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, tmp_path / "ckpt.pt")
    del first, opt

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain tensors/numbers only
    resumed = tiny_llama(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt = build_optimizer(resumed, cfg)
    opt.load_state_dict(ckpt["optim"])
    train(resumed, opt, 3)

    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"{name}: {n} differs after resume"


# ---------------------------------------------------------------------------
# state accounting
# ---------------------------------------------------------------------------
def test_adamw_state_bytes_exact():
    model = tiny_llama()
    opt = build_optimizer(model, OptimConfig(name="adamw"))
    train(model, opt, 1)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    # two fp32 moments per element + one fp32 step counter per tensor
    assert optimizer_state_bytes(opt) == 2 * 4 * n + 4 * len(params)
    mats = [p for g in opt.param_groups if g["kind"] == "matrix" for p in g["params"]]
    assert optimizer_state_bytes(opt, mats) == sum(8 * p.numel() + 4 for p in mats)


class LlamaShapedStack(nn.Module):
    """The 2-D weights of one Llama block at hidden size d (q, k, v, o: d x d; gate, up, down: d x 8d/3)."""

    def __init__(self, d: int = 256, ff: int = 688):
        super().__init__()
        self.attn = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.down = nn.Linear(ff, d, bias=False)

    def loss(self, x, h):
        out = sum(lin(x).square().mean() for lin in self.attn)
        return out + self.gate(x).square().mean() + self.up(x).square().mean() + self.down(h).square().mean()


def matrix_state_ratios(names, d=256, ff=688, options=None) -> dict[str, float]:
    torch.manual_seed(0)
    x, h = torch.randn(8, d), torch.randn(8, ff)
    out = {}
    for name in ("adamw", *names):
        model = LlamaShapedStack(d, ff)
        opt = build_optimizer(model, OptimConfig(name=name, lr=1e-3, options=(options or {}).get(name, {})))
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            model.loss(x, h).backward(create_graph=needs_create_graph(opt))
            opt.step()
        out[name] = optimizer_state_bytes(opt, model.parameters())
    base = out.pop("adamw")
    return {k: v / base for k, v in out.items()}


@requires("adamw_8bit", "apollo_mini")
def test_state_ratio_targets_on_llama_shaped_weights():
    ratios = matrix_state_ratios(
        ["galore_adamw", "adamw_8bit", "apollo_mini", "lion"], options={"galore_adamw": {"rank": 256 // 4}}
    )
    assert ratios["galore_adamw"] <= 0.35, ratios  # rank d/4
    assert ratios["adamw_8bit"] <= 0.30, ratios
    assert ratios["apollo_mini"] <= 0.05, ratios
    assert ratios["lion"] == pytest.approx(0.5, abs=1e-3), ratios


def test_galore_state_counts_projection_matrices():
    ratios = matrix_state_ratios(["galore_adamw"], d=256, ff=256, options={"galore_adamw": {"rank": 64}})
    # square d x d weights at rank d/4: two r x d moments + one r x d projection = 3/8 of AdamW
    assert ratios["galore_adamw"] == pytest.approx(3 / 8, abs=1e-3)


# ---------------------------------------------------------------------------
# wrapped optimizers against from-scratch references of the papers' update rules
# ---------------------------------------------------------------------------
class TwoMatrices(nn.Module):
    """A wide (m < n) and a tall (m > n) matrix, plus a bias (AdamW path)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Parameter(torch.randn(10, 24) * 0.3)
        self.tall = nn.Parameter(torch.randn(24, 10) * 0.3)
        self.bias = nn.Parameter(torch.zeros(24))

    def forward(self, x):  # x: (B, 24)
        return torch.tanh(torch.tanh(x @ self.wide.T) @ self.tall.T + self.bias)


X = torch.randn(16, 24, generator=torch.Generator().manual_seed(2))
Y = torch.randn(16, 24, generator=torch.Generator().manual_seed(3))


def grads_of(model):
    model.zero_grad(set_to_none=True)
    ((model(X) - Y) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def adamw_ref(p, g, st, t, lr, b1, b2, eps, wd):
    """HF/GaLore-style AdamW (eps added to the uncorrected sqrt(v)), decoupled decay after the update."""
    st.setdefault("m", torch.zeros_like(g)).mul_(b1).add_(g, alpha=1 - b1)
    st.setdefault("v", torch.zeros_like(g)).mul_(b2).addcmul_(g, g, value=1 - b2)
    step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    p = p - step * st["m"] / (st["v"].sqrt() + eps)
    return p * (1 - lr * wd)


def test_galore_matches_paper_update_rule():
    lr, (b1, b2), eps, wd, rank, gap, scale = 0.05, (0.9, 0.99), 1e-8, 0.1, 3, 2, 0.25
    model, ref = TwoMatrices(), TwoMatrices()
    opt = build_optimizer(
        model,
        OptimConfig(name="galore_adamw", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                    options={"rank": rank, "update_proj_gap": gap, "scale": scale}),
    )
    rp = {n: p.detach().clone() for n, p in ref.named_parameters()}
    rs = {n: {} for n in rp}
    for t in range(1, 6):
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(rp[n])
        g = grads_of(ref)
        for n in rp:
            if n == "bias":  # 1-D: plain AdamW, no decay
                rp[n] = adamw_ref(rp[n], g[n], rs[n], t, lr, b1, b2, eps, 0.0)
                continue
            st, G = rs[n], g[n]
            left = G.shape[0] < G.shape[1]  # project the shorter side
            if t == 1 or t % gap == 0:  # pytorch_optimizer refreshes at t = 1, gap, 2*gap, ...
                U, _, Vh = torch.linalg.svd(G, full_matrices=False)
                st["P"] = U[:, :rank] if left else Vh[:rank]
            R = st["P"].T @ G if left else G @ st["P"].T
            st.setdefault("m", torch.zeros_like(R)).mul_(b1).add_(R, alpha=1 - b1)
            st.setdefault("v", torch.zeros_like(R)).mul_(b2).addcmul_(R, R, value=1 - b2)
            N = st["m"] / (st["v"].sqrt() + eps)
            back = (st["P"] @ N if left else N @ st["P"]) * scale
            step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            rp[n] = (rp[n] - step * back) * (1 - lr * wd)
        model.zero_grad(set_to_none=True)
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), rp[n], rtol=1e-5, atol=1e-6, msg=f"step {t} {n}")


@requires("apollo")
@pytest.mark.parametrize("variant", ["apollo", "apollo_mini"])
def test_apollo_matches_paper_update_rule(variant):
    lr, (b1, b2), eps, wd, gap = 0.05, (0.9, 0.99), 1e-6, 0.1, 2
    options = {"update_proj_gap": gap} | ({"rank": 4} if variant == "apollo" else {})
    model, ref = TwoMatrices(), TwoMatrices()
    opt = build_optimizer(
        model, OptimConfig(name=variant, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, options=options)
    )
    group = next(g for g in opt.param_groups if g["kind"] == "matrix")
    scale, channel = group["scale"], group["scale_type"] == "channel"
    rp = {n: p.detach().clone() for n, p in ref.named_parameters()}
    rs = {n: {} for n in rp}
    prev_P = {}
    for t in range(1, 6):
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(rp[n])
        g = grads_of(ref)
        model.zero_grad(set_to_none=True)
        ((model(X) - Y) ** 2).mean().backward()
        opt.step()
        for n, p in model.named_parameters():
            G, st = g[n], rs[n]
            if n == "bias":
                rp[n] = adamw_ref(rp[n], G, st, t, lr, b1, b2, eps, 0.0)
                continue
            P = opt.state[p]["projector"].ortho_matrix  # the random projection used at step t
            wide = G.shape[0] < G.shape[1]
            assert P.shape == ((G.shape[0], group["rank"]) if wide else (group["rank"], G.shape[1]))
            refreshed = n not in prev_P or not torch.equal(P, prev_P[n])
            assert refreshed == ((t - 1) % gap == 0), (t, n)  # new projection every `gap` steps
            prev_P[n] = P.clone()
            R = P.T @ G if wide else G @ P.T  # low-rank gradient
            st.setdefault("m", torch.zeros_like(R)).mul_(b1).add_(R, alpha=1 - b1)
            st.setdefault("v", torch.zeros_like(R)).mul_(b2).addcmul_(R, R, value=1 - b2)
            Rt = st["m"] / (st["v"].sqrt() + eps)  # Adam direction in the subspace
            if channel:  # one factor per column (wide) / row (tall) of the full gradient
                dim = 0 if wide else 1
                s = Rt.norm(dim=dim) / (R.norm(dim=dim) + 1e-8)
                s = s[None, :] if wide else s[:, None]
            else:
                s = Rt.norm() / (R.norm() + 1e-8)
            upd = G * s  # scaled *raw* gradient (APOLLO's SGD-like update)
            norm = upd.norm()
            if "prev" in st and norm / (st["prev"] + 1e-8) > 1.01:  # norm-growth limiter
                upd = upd * (1.01 / (norm / (st["prev"] + 1e-8)))
                norm = upd.norm()
            st["prev"] = norm
            step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            rp[n] = (rp[n] - step * math.sqrt(scale) * upd) * (1 - lr * wd)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), rp[n], rtol=1e-5, atol=1e-6, msg=f"step {t} {n}")


@requires("apollo")
def test_apollo_projection_is_seeded_not_global_rng():
    def first_projection(global_seed):
        torch.manual_seed(global_seed)
        model = TwoMatrices()
        opt = build_optimizer(model, OptimConfig(name="apollo", options={"rank": 4}))
        grads_of(model)
        opt.step()
        return opt.state[model.wide]["projector"].ortho_matrix

    assert torch.equal(first_projection(0), first_projection(1))


def test_sophia_matches_paper_update_rule():
    lr, (b1, b2), eps, wd, clip, k, seed = 0.1, (0.9, 0.95), 1e-8, 0.1, 0.05, 2, 7
    model, ref = TwoMatrices(), TwoMatrices()
    opt = build_optimizer(
        model,
        OptimConfig(name="sophia", lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                    options={"clip": clip, "update_period": k, "seed": seed}),
    )
    name_of = {id(p): n for n, p in model.named_parameters()}
    order = [name_of[id(p)] for g in opt.param_groups for p in g["params"]]  # the optimizer's probe order
    gen = torch.Generator().manual_seed(seed)
    rp = {n: p.detach().clone() for n, p in ref.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in rp.items()}
    h = {n: torch.zeros_like(p) for n, p in rp.items()}
    for t in range(1, 6):
        params = [dict(ref.named_parameters())[n] for n in order]
        with torch.no_grad():
            for n, p in ref.named_parameters():
                p.copy_(rp[n])
        loss = ((ref(X) - Y) ** 2).mean()
        gs = torch.autograd.grad(loss, params, create_graph=True)
        if (t - 1) % k == 0:  # Hutchinson: h_hat = z * (H z), z ~ N(0, I)
            zs = [torch.randn(p.shape, generator=gen) for p in params]
            hzs = torch.autograd.grad(gs, params, grad_outputs=zs)
            for n, z, hz in zip(order, zs, hzs):
                h[n] = b2 * h[n] + (1 - b2) * z * hz
        for n, gr in zip(order, gs):
            m[n] = b1 * m[n] + (1 - b1) * gr.detach()
            decay = 0.0 if n == "bias" else wd
            upd = (m[n] / h[n].clamp(min=eps)).clamp(-clip, clip)
            rp[n] = rp[n] * (1 - lr * decay) - lr * upd

        assert needs_create_graph(opt) == ((t - 1) % k == 0)
        model.zero_grad(set_to_none=True)
        ((model(X) - Y) ** 2).mean().backward(create_graph=needs_create_graph(opt))
        opt.step()
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), rp[n], rtol=1e-5, atol=1e-6, msg=f"step {t} {n}")
        assert all("hessian" not in s for s in opt.state.values())  # only momentum + Hessian EMA kept


def test_sophia_without_create_graph_is_a_clear_error():
    model = TwoMatrices()
    opt = build_optimizer(model, OptimConfig(name="sophia"))
    grads_of(model)  # plain backward
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()


@requires("adamw_8bit")
def test_adamw_8bit_tracks_adamw():
    runs = {}
    for name in ("adamw", "adamw_8bit"):
        model = TwoMatrices()
        opt = build_optimizer(model, OptimConfig(name=name, lr=1e-2, options={"min_8bit_size": 1} if "8" in name else {}))
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(5):
            grads_of(model)
            opt.step()
        runs[name] = {n: p.detach() - start[n] for n, p in model.named_parameters()}
    assert opt.state[model.wide]["state1"].dtype == torch.uint8
    for n, delta in runs["adamw"].items():
        err = (runs["adamw_8bit"][n] - delta).norm() / delta.norm()
        assert err < 0.05, (n, err)


def test_muon_orthogonalizes_matrices_only():
    model = tiny_llama()
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2))
    assert {g["kind"]: g["use_muon"] for g in opt.param_groups} == {
        "matrix": True, "embedding": False, "no_decay": False
    }


# ---------------------------------------------------------------------------
# bad input: clear errors before training starts
# ---------------------------------------------------------------------------
def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown optimizer 'galore'.*did you mean 'galore_adamw'"):
        OptimConfig(name="galore").validate()
    with pytest.raises(ValueError, match=r"did you mean 'adamw_8bit'"):
        OptimConfig(name="adamw8bit").validate()


def test_unknown_option_names_optimizer_key_and_accepted():
    with pytest.raises(ValueError) as e:
        OptimConfig(name="galore_adamw", options={"rnk": 4}).validate()
    msg = str(e.value)
    assert "'galore_adamw'" in msg and "'rnk'" in msg and "did you mean 'rank'" in msg
    assert "It accepts: proj_type, rank, scale, update_proj_gap." in msg
    with pytest.raises(ValueError, match=r"'adamw' does not take option 'rank'.*takes no options"):
        OptimConfig(name="adamw", options={"rank": 4}).validate()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(name="galore_adamw", options={"rank": "big"}), r"options.rank .*integer"),
        (dict(name="galore_adamw", options={"rank": 0}), r"options.rank .*>= 1"),
        pytest.param(dict(name="apollo", options={"scale_type": "row"}), r"scale_type .*one of",
                     marks=requires("apollo")),
        (dict(name="muon", options={"nesterov": 1}), r"nesterov .*true or false"),
        (dict(name="adafactor", betas=(0.9, 0.99)), r"'adafactor' does not use optim.betas"),
        (dict(name="lion", eps=1e-6), r"'lion' does not use optim.eps"),
        (dict(lr=0.0), r"optim.lr: got 0.0, expected a number > 0"),
        (dict(lr="1e-3"), r"optim.lr: got '1e-3', expected a number > 0"),
        (dict(betas=(0.9, 1.0)), r"optim.betas"),
        (dict(weight_decay=-1), r"optim.weight_decay"),
    ],
)
def test_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_optimizer(Toy(), OptimConfig(**kwargs))


@pytest.mark.parametrize("name", [installed(n) for n in ALL if OPTIMIZERS[n].needs_matrices])
def test_matrix_optimizer_without_matrices(name):
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"2-D weight matrices.*has none.*embedding \(1\), no_decay \(2\)"):
        build_optimizer(model, OptimConfig(name=name))
    build_optimizer(model, OptimConfig(name="adamw"))  # fine for AdamW


def test_no_trainable_parameters():
    model = Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig())


def test_missing_library(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ValueError, match=r"'adamw_8bit' needs bitsandbytes.*pip install bitsandbytes"):
        OptimConfig(name="adamw_8bit").validate()
    assert "adamw_8bit" not in available_optimizers() and "adamw" in available_optimizers()
