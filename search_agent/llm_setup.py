"""Build the LLM side of a search run from its command-line settings (`ttsgym search --proposer llm`).

One ledger (RUN_DIR/spend.jsonl) counts the proposer's and the critic's calls, so one cap holds for
both. Prices: `--price IN,OUT` prices the proposer model; the critic model, when it differs, takes
its price from the built-in table and falls back to `--price` (stated in the error when neither
applies and a cap is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ttsgym.search_agent.context import ContextBuilder
from ttsgym.search_agent.costs import CostLedger, parse_price, resolve_price
from ttsgym.search_agent.critic import LLMCritic
from ttsgym.search_agent.llm import LLMClient, LLMConfig
from ttsgym.search_agent.llm_proposer import LLMProposer

LEDGER_NAME = "spend.jsonl"


@dataclass
class LLMSide:
    """What the loop needs for an LLM run: the proposer, the critic, and the shared ledger."""

    proposer: LLMProposer
    critic: LLMCritic
    ledger: CostLedger


def open_llm(run_dir: Path, *, base_url: str, model: str, critic_model: str | None = None,
             api_key_env: str = "OPENAI_API_KEY", price: str | tuple[float, float] | None = None,
             budget_usd: float | None = None, max_tokens: int = 4096, timeout_s: float = 300.0,
             stream: bool = False, temperature: float = 0.7, context_tokens: int = 16000,
             max_calls: int = 6, max_drafts: int = 4) -> LLMSide:
    """Raises LLMFatal (no key, no price under a cap) or ValueError (a malformed --price) up front."""
    pin: float | None = None
    pout: float | None = None
    if price is not None:
        pin, pout = parse_price(price) if isinstance(price, str) else price
    ledger = CostLedger(Path(run_dir) / LEDGER_NAME, budget_usd)
    common = {"base_url": base_url, "api_key_env": api_key_env, "max_tokens": max_tokens,
              "timeout_s": timeout_s, "stream": stream, "temperature": temperature}
    client = LLMClient(LLMConfig(model=model, price_in=pin, price_out=pout, **common), ledger)
    critic_name = critic_model or model
    if critic_name == model:
        critic_client = client
    else:
        cin, cout = resolve_price(critic_name, None, None) or (pin, pout)
        critic_cfg = LLMConfig(model=critic_name, price_in=cin, price_out=cout, **common)
        critic_client = LLMClient(critic_cfg, ledger)
    proposer = LLMProposer(client, ContextBuilder(token_budget=context_tokens, max_drafts=max_drafts),
                           max_calls=max_calls, max_drafts=max_drafts)
    return LLMSide(proposer, LLMCritic(critic_client), ledger)
