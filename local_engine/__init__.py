"""The bundled local inference engine: Llama-family models over a paged KV cache."""

from local_engine.async_engine import AsyncEngine, EngineClosedError
from local_engine.config import EngineConfig, ModelConfig
from local_engine.engine import LLMEngine, RequestError
from local_engine.llm import LLM
from local_engine.lora import LoRAError, LoRAInfo
from local_engine.model_source import ModelNotFoundError, resolve_model
from local_engine.openai_api import OpenAIError
from local_engine.outputs import Completion, RequestOutput
from local_engine.sampling_params import SamplingParams
from local_engine.sequence import TokenLogprob
from local_engine.tokenizer import Tokenizer

__all__ = [
    "LLM",
    "AsyncEngine",
    "Completion",
    "EngineClosedError",
    "EngineConfig",
    "LLMEngine",
    "LoRAError",
    "LoRAInfo",
    "ModelConfig",
    "ModelNotFoundError",
    "OpenAIError",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
    "Tokenizer",
    "resolve_model",
]
