"""FedIT's random streams (purposes for ``fedsim.seeding.derive_seed``; the engine's are < 100)."""

LORA_INIT = 101  # the global LoRA adapter's initial A matrices
LORA_DROPOUT = 102  # LoRA dropout masks in a local run
HELDOUT_SPLIT = 103  # the fixed held-out test records per category
INSTRUCTION_PARTITION = 104  # category shards / Dirichlet / IID client split
STREAMS = {
    "fedit.lora-init": LORA_INIT,
    "fedit.lora-dropout": LORA_DROPOUT,
    "fedit.heldout-split": HELDOUT_SPLIT,
    "fedit.instruction-partition": INSTRUCTION_PARTITION,
}
