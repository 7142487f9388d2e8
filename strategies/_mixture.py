"""Domain mixtures for token streams: which share of each training batch comes from which domain.

A ``MixtureScheduler`` gives weights over the domains available at an experience (the current
one and the earlier ones) for every batch, and may learn from feedback:

    weights(domains, current, experience, progress) -> weights over ``domains`` (sum 1)
    observe(kind, step, losses)   kind "train": mean loss of each domain's windows in the last
                                  batch; kind "eval": held-out loss per domain (only when
                                  ``wants_eval``: the strategy evaluates every feedback_every steps)
    begin_experience(domains, experience), state_dict(), load_state_dict(state)

Weight mappings name domains, plus two keys: ``current`` (the domain of the experience being
trained) and ``previous`` (split evenly over the earlier domains). Weights are relative: they are
normalised over the domains available now; a domain not named gets 0. Built in: ``static``,
``staged`` (a curriculum of stages, Llama-3-SynE style), ``odm`` (Online Data Mixing, an EXP3
bandit on the training loss). A Data Mixing Agent plugs in as ``package.module:Class``
(constructed with the strategy's ``scheduler_args``).
"""
import math

import numpy as np

from cl.errors import ConfigError

SPECIAL = ("current", "previous")


def resolve_weights(spec, domains, current):
    """Weights over ``domains`` (names available now) from a mapping of names / current / previous,
    normalised to sum 1. Names not available now (later domains) are ignored here."""
    w = np.zeros(len(domains))
    index = {d: k for k, d in enumerate(domains)}
    prev = [index[d] for d in domains if d != current]
    for key, value in dict(spec).items():
        value = float(value)
        if value < 0:
            raise ConfigError(f"Mixture weight for '{key}' is negative ({value}); weights are relative and >= 0.")
        if key == "current":
            w[index[current]] += value
        elif key == "previous":
            if prev:
                w[prev] += value / len(prev)
        elif key in index:
            w[index[key]] += value
    if w.sum() <= 0:
        raise ConfigError(f"The mixture weights {dict(spec)} give nothing to train on with the domains available "
                          f"now ({', '.join(domains)}; current: {current}). Give the current domain a weight "
                          "(e.g. current: 1.0).")
    return w / w.sum()


def check_names(spec, known, where):
    """ConfigError for weight keys that are neither a known domain nor current/previous."""
    bad = [k for k in dict(spec) if k not in SPECIAL and k not in known]
    if bad:
        raise ConfigError(f"{where} names unknown domain(s) {bad}. Domains of this stream so far: "
                          f"{', '.join(known)}; special keys: current, previous.")


class MixtureScheduler:
    """Base: the current domain only (plain continued pre-training)."""

    wants_eval = False

    def begin_experience(self, domains, experience):
        """A new experience starts; ``domains`` are those available (earlier ones and the current one)."""

    def weights(self, domains, current, experience, progress):
        return resolve_weights({"current": 1.0}, domains, current)

    def observe(self, kind, step, losses):
        """Feedback: ``losses`` maps domain name -> loss ("train": last batch; "eval": held-out)."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class StaticMixture(MixtureScheduler):
    """Fixed relative weights, e.g. {current: 0.75, english_web: 0.25}."""

    def __init__(self, weights):
        self.spec = dict(weights) or {"current": 1.0}

    def weights(self, domains, current, experience, progress):
        return resolve_weights(self.spec, domains, current)


class StagedMixture(MixtureScheduler):
    """A curriculum: a list of stages ``{experience: i (optional), until: fraction of the
    experience's steps (default 1), weights: {...}}``; the first stage that matches the experience
    and whose ``until`` lies ahead of the progress gives the weights. Llama-3-SynE (Chen et al. 2024,
    arXiv 2407.18743) trains in two stages with different mixtures (bilingual adaptation, then
    synthetic-data enhancement): two stages here."""

    def __init__(self, stages):
        if not stages:
            raise ConfigError("scheduler=staged needs strategy.stages: [{until: 0.5, weights: {...}}, ...].")
        self.stages = []
        for k, st in enumerate(stages):
            st = dict(st)
            extra = set(st) - {"experience", "until", "weights"}
            if extra or "weights" not in st:
                raise ConfigError(f"strategy.stages[{k}] takes experience, until and weights (required); got "
                                  f"{', '.join(st)}.")
            exp = st.get("experience")
            self.stages.append({"experience": None if exp is None else ([exp] if isinstance(exp, int) else list(exp)),
                                "until": float(st.get("until", 1.0)), "weights": dict(st["weights"])})

    def stage(self, experience, progress):
        matching = [s for s in self.stages if s["experience"] is None or experience in s["experience"]]
        if not matching:
            raise ConfigError(f"No stage of strategy.stages applies to experience {experience}; add one "
                              "without 'experience' (applies to all) or one for it.")
        for s in matching:
            if progress < s["until"]:
                return s
        return matching[-1]

    def weights(self, domains, current, experience, progress):
        return resolve_weights(self.stage(experience, progress)["weights"], domains, current)


class OnlineDataMixing(MixtureScheduler):
    """ODM: Albalak, Pan, Raffel & Wang, "Efficient Online Data Mixing For Language Model
    Pre-Training", arXiv 2312.02406 (2023). Each domain is an arm of an EXP3 bandit whose reward
    is its training loss (a domain still poorly modelled is worth more data). With mixed batches,
    after every step and for each domain k in the batch: R_k += (L_k / reward_scale) / pi_k; then
    eps_t = min(1/K, sqrt(ln K / (K t))) and pi_k = (1 - K eps_t) exp(eps_{t-1} R_k) /
    sum_j exp(eps_{t-1} R_j) + eps_t (then normalised). During ``warmup_steps`` the initial weights
    are used. Defaults from the authors' ``scripts/train_1B_exp3_mixed_minibatches.sh`` (warm-up
    2000 steps, update every step) and ``Exp3WeightUpdater`` (reward / 10). Here the bandit restarts
    at every experience over the domains available then (earlier ones and the current one)."""

    def __init__(self, warmup_steps=2000, reward_scale=10.0, initial=None):
        self.warmup, self.scale = int(warmup_steps), float(reward_scale)
        self.initial = dict(initial) if initial else None
        self.domains, self.R, self.pi, self.t, self.eps = [], np.zeros(0), np.zeros(0), 0, 0.0

    def begin_experience(self, domains, experience):
        K = len(domains)
        self.domains, self.R, self.t, self.eps = list(domains), np.zeros(K), 0, 1.0 / K
        self.pi = resolve_weights(self.initial, domains, domains[-1]) if self.initial else np.full(K, 1.0 / K)

    def weights(self, domains, current, experience, progress):
        return self.pi.copy()

    def observe(self, kind, step, losses):
        if kind != "train":
            return
        self.t += 1
        if self.t <= self.warmup or len(self.domains) < 2:
            return
        K, n = len(self.domains), self.t - self.warmup
        for name, loss in losses.items():
            k = self.domains.index(name)
            self.R[k] += (loss / self.scale) / self.pi[k]
        prev_eps, self.eps = self.eps, min(1.0 / K, math.sqrt(math.log(K) / (K * n)))
        z = np.exp(prev_eps * (self.R - self.R.max()))      # shift-invariant: same ratios, no overflow
        w = (1 - K * self.eps) * z / z.sum() + self.eps
        self.pi = w / w.sum()

    def state_dict(self):
        return {"domains": list(self.domains), "R": self.R.tolist(), "pi": self.pi.tolist(), "t": self.t,
                "eps": self.eps}

    def load_state_dict(self, state):
        if state:
            self.domains, self.t, self.eps = list(state["domains"]), int(state["t"]), float(state["eps"])
            self.R, self.pi = np.array(state["R"]), np.array(state["pi"])


def make_scheduler(cfg):
    """The scheduler named by ``cfg.scheduler`` (static | staged | odm | package.module:Class)."""
    name, args = cfg.scheduler, dict(cfg.scheduler_args or {})
    if name == "static":
        return StaticMixture(cfg.weights)
    if name == "staged":
        return StagedMixture(list(cfg.stages))
    if name == "odm":
        try:
            return OnlineDataMixing(initial=cfg.weights or None, **args)
        except TypeError as e:
            raise ConfigError(f"strategy.scheduler_args for odm: {e} (takes warmup_steps, reward_scale).") from None
    if ":" in name:
        from cl.registry import _import_object
        cls = _import_object(name, "mixture scheduler")
        try:
            return cls(**args)
        except TypeError as e:
            raise ConfigError(f"Cannot build the mixture scheduler {name} with strategy.scheduler_args {args}: "
                              f"{e}") from None
    raise ConfigError(f"strategy.scheduler must be static, staged, odm or package.module:Class, got '{name}'.")


def per_domain_losses(token_losses, groups):
    """{group id: mean loss of its windows} from per-token losses [B, T] and the window groups [B]."""
    per_window = token_losses.float().mean(1).detach()
    out = {}
    for g in groups.unique().tolist():
        out[int(g)] = float(per_window[groups == g].mean())
    return out


def check_token_stream(stream, name):
    """ConfigError before training when the run is not a token scenario (windows of token ids)."""
    if stream.num_experiences and len(stream.input_shape) != 1:
        raise ConfigError(f"Strategy '{name}' mixes token windows of text domains; this scenario has inputs of shape "
                          f"{tuple(stream.input_shape)}. Use it with a token scenario (scenario.name=text_domains).")


class SeenDomains:
    """The training and held-out token data of the experiences seen so far (what replay and mixtures
    draw from), in order; checkpointed with the strategy."""

    def __init__(self):
        self.names, self.index, self.train, self.test = [], [], [], []

    def add(self, exp):
        from cl.tokens import TokenData
        if not isinstance(exp.train, TokenData):
            raise ConfigError("Token replay and domain mixtures need a token scenario (e.g. text_domains), got "
                              f"{type(exp.train).__name__} training data.")
        if exp.domain in self.names:                         # a recurring domain keeps one entry
            return
        self.names.append(exp.domain or f"exp{exp.index}")
        self.index.append(exp.index)
        self.train.append(exp.train)
        self.test.append(exp.test)

    def state(self):
        return {"names": list(self.names), "index": list(self.index), "train": [d.state() for d in self.train],
                "test": [d.state() for d in self.test]}

    def load(self, state):
        from cl.tokens import TokenData
        self.names, self.index = list(state.get("names", [])), list(state.get("index", []))
        self.train = [TokenData.from_state(s) for s in state.get("train", [])]
        self.test = [TokenData.from_state(s) for s in state.get("test", [])]
