"""Interpretability: top-activating contexts of every latent, judge-LLM auto-interpretation, a static dashboard,
and a Neuronpedia export. See ``docs/interp.md``."""

from .autointerp import AutointerpConfig, BinaryScores, binary_scores, run_autointerp, sample_latents, summarize
from .collector import BatchView, CollectorConfig, CollectorSpec, FeatureCollector
from .dashboard import build_dashboard
from .features import FeaturesConfig, collect_features, logit_lens
from .judges import CachedJudge, JudgeConfig, LocalJudge, OpenAIJudge, RateLimiter, ask, make_judge
from .neuronpedia import NeuronpediaConfig, export_neuronpedia
from .prompts import FastVerdict, ParseError, parse_fast
from .server import JudgeServer
from .store import Context, FeatureData, TemplateStat

__all__ = [
    "AutointerpConfig",
    "BatchView",
    "BinaryScores",
    "CachedJudge",
    "CollectorConfig",
    "CollectorSpec",
    "Context",
    "FastVerdict",
    "FeatureCollector",
    "FeatureData",
    "FeaturesConfig",
    "JudgeConfig",
    "JudgeServer",
    "LocalJudge",
    "NeuronpediaConfig",
    "OpenAIJudge",
    "ParseError",
    "RateLimiter",
    "TemplateStat",
    "ask",
    "binary_scores",
    "build_dashboard",
    "collect_features",
    "export_neuronpedia",
    "logit_lens",
    "make_judge",
    "parse_fast",
    "run_autointerp",
    "sample_latents",
    "summarize",
]
