from .repository import RunRepository, default_repository, output_text

__all__ = ["RunRepository", "default_repository", "output_text"]
