"""Causal-LM pieces for FedIT: model + LoRA loading (``model``), prompts and tokenisation
(``prompts``), adapter <-> ArrayRecord (``adapter``), local training (``train``) and
evaluation (``evaluate``). Heavy imports (transformers, peft) happen inside the functions
that need them, so importing fedsim stays cheap."""
