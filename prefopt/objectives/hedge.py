"""No-regret ensembles: Hedge (multiplicative weights) over K experts — scorers or judges.

After t rounds of losses ℓ_{k,s} ∈ [0, 1] the weights are w_k ∝ exp(−η Σ_{s≤t} ℓ_{k,s}). The
ensemble's loss in round t is ⟨w_t, ℓ_t⟩ (the weights *before* seeing ℓ_t), and its regret is
Σ_t ⟨w_t, ℓ_t⟩ − min_k Σ_t ℓ_{k,t}. For losses in [0, 1] and a fixed η, regret ≤ ln K/η + ηT/8
(Cesa-Bianchi & Lugosi 2006, Thm 2.2), which η = sqrt(8 ln K / T) makes sqrt(T ln K / 2).

Step sizes (``eta_mode``): ``fixed`` (η given), ``horizon`` (η = sqrt(8 ln K / T) for a known
horizon T; the bound above holds for t ≤ T), ``doubling`` (the doubling trick: epochs of 1, 2, 4, …
rounds, each restarting the weights with η_m = sqrt(8 ln K / 2^m); regret ≤
√2/(√2 − 1) · sqrt(T ln K / 2) for every T, no horizon needed).

:class:`HedgeJudge` and :class:`HedgeReward` combine judges / scorers with the weights and learn
from labelled pairs (e.g. gold labels on a fraction of online pairs). State is a plain tree
(:meth:`Hedge.state_dict`) for safetensors + JSON checkpoints.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch

from prefopt.errors import ConfigError, DataError
from prefopt.seeding import HEDGE_FEEDBACK, derive_seed
from prefopt.rollout.preferences import NamedJudge, RewardJudge, as_judge

ETA_MODES = ("fixed", "horizon", "doubling")
FEEDBACK_LOSSES = ("absolute", "squared", "zero_one")
DOUBLING_FACTOR = math.sqrt(2) / (math.sqrt(2) - 1)


def tuned_eta(num_experts: int, rounds: int) -> float:
    """η = sqrt(8 ln K / T): minimizes ln K/η + ηT/8, giving regret ≤ sqrt(T ln K / 2)."""
    return math.sqrt(8 * math.log(num_experts) / rounds)


class Hedge:
    """Hedge over named experts; feed it per-round losses in [0, 1] with :meth:`update`."""

    def __init__(self, experts: Sequence[str] | int, *, eta: float | None = None, horizon: int | None = None,
                 key: str = "hedge"):
        names = [f"expert{i}" for i in range(experts)] if isinstance(experts, int) else [str(e) for e in experts]
        if len(names) < 2:
            raise ConfigError(f"{key}: an ensemble needs at least 2 experts, got {len(names)} {names}")
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}: expert names must be distinct, got {names}")
        if eta is not None and horizon is not None:
            raise ConfigError(f"{key}: give eta (fixed) or horizon (tuned η), not both")
        if eta is not None and not (math.isfinite(eta) and eta > 0):
            raise ConfigError(f"{key}.eta: got {eta}, expected a finite value > 0")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ConfigError(f"{key}.horizon: got {horizon!r}, expected an integer >= 1")
        self.names, self.key = names, key
        self.mode = "fixed" if eta is not None else "horizon" if horizon is not None else "doubling"
        self.horizon = int(horizon or 0)
        self.base_eta = float(eta) if eta is not None else tuned_eta(len(names), horizon) if horizon else 0.0
        k = len(names)
        self.rounds = 0  # all rounds seen
        self.epoch, self.epoch_rounds = 0, 0  # doubling trick: epoch m lasts 2**m rounds
        self.expert_loss = torch.zeros(k, dtype=torch.float64)  # Σ_t ℓ_{k,t} over all rounds
        self.epoch_loss = torch.zeros(k, dtype=torch.float64)  # the same since the current epoch began
        self.algorithm_loss = 0.0  # Σ_t ⟨w_t, ℓ_t⟩

    @property
    def num_experts(self) -> int:
        return len(self.names)

    @property
    def eta(self) -> float:
        """The step size in use now."""
        if self.mode == "doubling":
            return tuned_eta(self.num_experts, 2 ** self.epoch)
        return self.base_eta

    @property
    def weights(self) -> torch.Tensor:
        """(K,) current weights, softmax(−η · cumulative loss of the epoch)."""
        return torch.softmax(-self.eta * self.epoch_loss, dim=0)

    @property
    def regret(self) -> float:
        """Ensemble loss minus the best single expert's loss in hindsight."""
        return self.algorithm_loss - float(self.expert_loss.min()) if self.rounds else 0.0

    def regret_bound(self) -> float:
        """The guaranteed bound on :attr:`regret` after the rounds seen so far."""
        k, t = self.num_experts, self.rounds
        if self.mode != "doubling":  # = sqrt(T ln K / 2) at t = T for the horizon-tuned η
            return math.log(k) / self.base_eta + self.base_eta * t / 8
        return DOUBLING_FACTOR * math.sqrt(t * math.log(k) / 2)

    def _check(self, losses) -> torch.Tensor:
        x = torch.as_tensor(losses, dtype=torch.float64)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != self.num_experts:
            raise DataError(f"{self.key}: losses of shape {tuple(x.shape)}, expected (K,) or (rounds, K) "
                            f"with K = {self.num_experts} experts ({', '.join(self.names)})")
        bad = ~(torch.isfinite(x) & (x >= 0) & (x <= 1))
        if bool(bad.any()):
            r, k = (int(i) for i in bad.nonzero()[0])
            raise DataError(f"{self.key}: loss {float(x[r, k])} for expert '{self.names[k]}' in round "
                            f"{self.rounds + r}; expected a value in [0, 1]")
        return x

    def update(self, losses) -> torch.Tensor:
        """One round per row of ``losses`` ((K,) or (rounds, K), each in [0, 1]), in order.

        Returns the ensemble's loss ⟨w_t, ℓ_t⟩ of each round. A bad row changes nothing.
        """
        x = self._check(losses)
        paid = torch.empty(x.shape[0], dtype=torch.float64)
        for r, row in enumerate(x):
            paid[r] = self.weights @ row
            self.algorithm_loss += float(paid[r])
            self.expert_loss += row
            self.epoch_loss += row
            self.rounds += 1
            self.epoch_rounds += 1
            if self.mode == "doubling" and self.epoch_rounds == 2 ** self.epoch:
                self.epoch, self.epoch_rounds = self.epoch + 1, 0
                self.epoch_loss.zero_()
        return paid

    def combine(self, values) -> torch.Tensor:
        """(..., K) expert outputs (probabilities or rewards) → (...,) weighted by the current weights."""
        v = torch.as_tensor(values, dtype=torch.float64)
        if v.shape[-1:] != (self.num_experts,):
            raise DataError(f"{self.key}: expert outputs of shape {tuple(v.shape)}, expected (..., {self.num_experts})")
        return v @ self.weights

    def metrics(self) -> dict[str, float]:
        out = {f"{self.key}/weight/{n}": float(w) for n, w in zip(self.names, self.weights)}
        out.update({f"{self.key}/regret": self.regret, f"{self.key}/regret_bound": self.regret_bound(),
                    f"{self.key}/eta": self.eta, f"{self.key}/rounds": float(self.rounds),
                    f"{self.key}/best_expert": float(self.expert_loss.argmin()) if self.rounds else -1.0})
        return out

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Plain tree: str, int, float, list of str and float64 tensors only."""
        return {"names": list(self.names), "mode": self.mode, "eta": self.base_eta, "horizon": self.horizon,
                "rounds": self.rounds, "epoch": self.epoch, "epoch_rounds": self.epoch_rounds,
                "algorithm_loss": self.algorithm_loss, "expert_loss": self.expert_loss.clone(),
                "epoch_loss": self.epoch_loss.clone()}

    def load_state_dict(self, state: dict) -> None:
        for field, mine in (("names", self.names), ("mode", self.mode), ("eta", self.base_eta),
                            ("horizon", self.horizon)):
            if field not in state:
                raise ConfigError(f"{self.key}: checkpoint state has no '{field}'")
            if state[field] != mine:
                raise ConfigError(f"{self.key}.{field}: the checkpoint has {state[field]!r}, this run {mine!r}; "
                                  "resume with the same experts and step size")
        k = self.num_experts
        for field in ("expert_loss", "epoch_loss"):
            t = torch.as_tensor(state[field], dtype=torch.float64)
            if t.shape != (k,):
                raise ConfigError(f"{self.key}: checkpoint '{field}' has shape {tuple(t.shape)}, expected ({k},)")
            getattr(self, field).copy_(t)
        self.rounds, self.epoch, self.epoch_rounds = int(state["rounds"]), int(state["epoch"]), int(state["epoch_rounds"])
        self.algorithm_loss = float(state["algorithm_loss"])


# --------------------------------------------------------------------------- labelled feedback


def feedback_losses(probs, labels, kind: str = "absolute") -> torch.Tensor:
    """Loss in [0, 1] of each expert's P(a ≻ b) against a gold label y ∈ [0, 1] (1 = a preferred).

    probs (B, K), labels (B,) → (B, K): ``absolute`` |p − y|, ``squared`` (p − y)², ``zero_one``
    1 when the expert's side (p > ½) is wrong, ½ when it says p = ½.
    """
    if kind not in FEEDBACK_LOSSES:
        raise ConfigError(f"hedge feedback loss: got '{kind}', expected one of {', '.join(FEEDBACK_LOSSES)}")
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    if p.dim() != 2 or y.shape != p.shape[:1]:
        raise DataError(f"hedge feedback: probabilities {tuple(p.shape)} and labels {tuple(y.shape)}; "
                        "expected (B, K) and (B,)")
    bad = ~(torch.isfinite(y) & (y >= 0) & (y <= 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise DataError(f"hedge feedback: label {float(y[i])} for pair {i}; expected a value in [0, 1]")
    y = y.unsqueeze(-1)
    if kind == "absolute":
        return (p - y).abs()
    if kind == "squared":
        return (p - y) ** 2
    return torch.where(p == 0.5, torch.full_like(p, 0.5), ((p > 0.5) != (y > 0.5)).to(p.dtype))


class HedgeJudge:
    """A judge P(a ≻ b) = Σ_k w_k P_k(a ≻ b) over K judges, learning w from labelled pairs."""

    def __init__(self, judges: Sequence, hedge: Hedge, *, loss: str = "absolute"):
        self.judges = [as_judge(j) for j in judges]
        if [j.name for j in self.judges] != hedge.names:
            raise ConfigError(f"{hedge.key}: experts {hedge.names} but judges {[j.name for j in self.judges]}")
        if loss not in FEEDBACK_LOSSES:
            raise ConfigError(f"{hedge.key}.loss: got '{loss}', expected one of {', '.join(FEEDBACK_LOSSES)}")
        self.hedge, self.loss, self.name = hedge, loss, f"{hedge.key}({', '.join(hedge.names)})"

    def expert_probs(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """(B, K) every judge's validated P(a_i ≻ b_i)."""
        return torch.tensor([[j.probability(p, x, y, f"pair {i}") for j in self.judges]
                             for i, (p, x, y) in enumerate(zip(prompts, a, b))], dtype=torch.float64)

    def __call__(self, prompt: str, a: str, b: str) -> float:
        return float(self.hedge.combine(self.expert_probs([prompt], [a], [b]))[0])

    def feedback(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], labels) -> torch.Tensor:
        """Update the weights from gold labels (1 = a preferred), one round per pair; returns (B, K) losses."""
        losses = feedback_losses(self.expert_probs(prompts, a, b), labels, self.loss)
        self.hedge.update(losses)
        return losses


class HedgeReward:
    """A reward Σ_k w_k r_k over K scalar scorers; w learns from labelled pairs through each scorer's
    Bradley-Terry prediction σ((r_k(a) − r_k(b)) / temperature)."""

    def __init__(self, scorers: Sequence[Callable[[list[str], list[str]], Sequence[float]]], hedge: Hedge, *,
                 temperature: float = 1.0, loss: str = "absolute"):
        if len(scorers) != hedge.num_experts:
            raise ConfigError(f"{hedge.key}: {hedge.num_experts} experts but {len(scorers)} scorers")
        self.members = [RewardJudge(s, n, temperature) for s, n in zip(scorers, hedge.names)]
        self.judge = HedgeJudge(self.members, hedge, loss=loss)
        self.hedge = hedge

    def expert_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """(N, K) each scorer's validated reward."""
        cols = [m.rewards(list(prompts), list(responses)) for m in self.members]
        return torch.tensor(cols, dtype=torch.float64).T

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.hedge.combine(self.expert_rewards(prompts, responses)).tolist()

    def feedback(self, prompts, a, b, labels) -> torch.Tensor:
        return self.judge.feedback(prompts, a, b, labels)


class HedgeLabeller(NamedJudge):
    """Hedge as a preference source that learns while it labels: P(a ≻ b) = Σ_k w_k P_k(a ≻ b) with the
    weights *before* this pair's feedback; then, for a ``feedback`` fraction of the pairs (a seeded
    draw per call), the ``gold`` judge's P(a ≻ b) is the soft label y and every expert pays
    loss(P_k, y) (:func:`feedback_losses`), one Hedge round per labelled pair.

    Usable wherever a judge is (online_dpo / iterative_dpo's ``online.judge: hedge``, the self-play
    presets' ``selfplay.judge: hedge``). :meth:`metrics` gives the weights, the cumulative regret
    against the best single expert in hindsight, its bound, and the agreement of the ensemble's
    side with the gold side on the labelled pairs; state is a plain tree."""

    def __init__(self, judges: Sequence, gold, hedge: Hedge, *, feedback: float = 0.25, loss: str = "absolute",
                 seed: int = 0):
        if not 0.0 <= feedback <= 1.0:
            raise ConfigError(f"{hedge.key}.feedback: got {feedback}, expected a fraction in [0, 1]")
        self.ensemble = HedgeJudge(judges, hedge, loss=loss)
        self.gold, self.hedge, self.feedback_rate, self.seed = as_judge(gold), hedge, float(feedback), int(seed)
        self.calls, self.labelled, self.agreed = 0, 0, 0
        super().__init__(self._label, self.ensemble.name)

    def _draw(self) -> float:
        # One uniform per call, a pure function of (seed, call index): resumable without RNG state.
        return random.Random(derive_seed(self.seed, HEDGE_FEEDBACK, self.calls)).random()

    def _label(self, prompt, a: str, b: str) -> float:
        probs = self.ensemble.expert_probs([prompt], [a], [b])
        value = float(self.hedge.combine(probs)[0])
        if self.feedback_rate > 0 and self._draw() < self.feedback_rate:
            y = self.gold.probability(prompt, a, b)
            self.hedge.update(feedback_losses(probs, [y], self.ensemble.loss))
            self.labelled += 1
            self.agreed += int((value > 0.5) == (y > 0.5))
        self.calls += 1
        return value

    def metrics(self) -> dict[str, float]:
        m = self.hedge.metrics()
        m[f"{self.hedge.key}/labelled"] = float(self.labelled)
        if self.labelled:
            m[f"{self.hedge.key}/gold_agreement"] = self.agreed / self.labelled
        return m

    def state_dict(self) -> dict:
        return {"hedge": self.hedge.state_dict(), "calls": self.calls, "labelled": self.labelled,
                "agreed": self.agreed}

    def load_state_dict(self, state: dict) -> None:
        self.hedge.load_state_dict(state["hedge"])
        self.calls, self.labelled, self.agreed = int(state["calls"]), int(state["labelled"]), int(state["agreed"])
