"""hubbot: merge LLM weights tensor by tensor, locally or straight from the Hugging Face Hub."""

import os

__version__ = "0.1.0"

# torch's OpenMP threads, when idle, otherwise spin for a while before sleeping; with other
# processes on the cores that spinning takes the CPU from the thread doing the work (TIES ran
# 10x slower beside one busy process). Read once, when torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
