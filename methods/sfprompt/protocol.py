"""The names both sides of SFPrompt's split training agree on: message types, the stage
names ``comm.csv`` counts them under, and the array / state keys.

Per sampled client and round (U-shaped split learning: the labels never leave the client):

    message type (= stage)       down (server -> client)        up (client -> server)
    train.prune                  prompts + tail (the model)     nothing (kept count)
    train.forward (stage train.split-activations)
                                 nothing                        head activations + mask
    train.tail (train.split-tail)
                                 body outputs                   d loss / d body outputs
    train.backward (train.split-gradients)
                                 d loss / d head activations    nothing
    train                        nothing                        prompts + tail

The three ``split`` exchanges repeat once per chunk (``plan.chunks``). Every stage starts
with ``train.`` so the loop counts a client failing in any of them as a training failure.
"""

from __future__ import annotations

# message types (the method's handlers) and the stages they are counted under
PRUNE, STAGE_PRUNE = "train.prune", "train.prune"
FORWARD, STAGE_ACTIVATIONS = "train.forward", "train.split-activations"
TAIL, STAGE_TAIL = "train.tail", "train.split-tail"
BACKWARD, STAGE_GRADIENTS = "train.backward", "train.split-gradients"
COLLECT, STAGE_COLLECT = "train", "train"

# array records in message contents
ARRAYS = "arrays"  # the trainable arrays (prune down, train up)
SPLIT = "split"  # activations / gradients of one chunk
ACTIVATIONS = "activations"  # (N, T, H) float32, head output
MASK = "mask"  # (N, T) bool, True where a position may be attended to
BODY_OUT = "body_out"  # (N, T, H) float32, body output
BODY_GRAD = "body_grad"  # (N, T, H) float32, d L_chunk / d body output
HEAD_GRAD = "head_grad"  # (N, T, H) float32, d L_chunk / d head output

# config keys the server adds to split messages (the client checks them against its plan)
CHUNK = "sfprompt.chunk"
SIZES = "sfprompt.sizes"  # micro-batch sizes of the chunk
TOKENS = "sfprompt.tokens"  # T = num_prompts + data.max_length
HIDDEN = "sfprompt.hidden"  # H
EXPECT = "sfprompt.expect"  # final train message: JSON {key: shape} of the trainable arrays
NUM_KEPT = "num-kept"  # prune reply metric: samples kept for split training
NUM_SAMPLES = "num-samples"  # prune reply metric: the client's samples before pruning
CLIENT_FLOPS = "client-flops"  # train reply metric: FLOPs the client computed this round

# Context.state records of a client during a round (cleared by the final train message)
STATE_PARAMS = "sfprompt.params"  # ArrayRecord: current prompts + tail
STATE_OPTIMIZER = "sfprompt.optimizer"  # ArrayRecord: optimiser state
STATE_ORDER = "sfprompt.order"  # ArrayRecord {"order": int64}: kept rows, epoch by epoch
STATE_GRADS = "sfprompt.grads"  # ArrayRecord: tail gradients of the current chunk
STATE_PROGRESS = "sfprompt.progress"  # ConfigRecord: round, next chunk, loss sums, metrics
STATE_FEATURES = "sfprompt.features"  # ArrayRecord: pooled-feature sum and count (centring)
STATE_KEYS = (
    STATE_PARAMS, STATE_OPTIMIZER, STATE_ORDER, STATE_GRADS, STATE_PROGRESS, STATE_FEATURES
)  # fmt: skip
