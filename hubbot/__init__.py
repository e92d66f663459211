"""hubbot: merge LLM weights tensor by tensor, locally or straight from the Hugging Face Hub."""

__version__ = "0.1.0"
