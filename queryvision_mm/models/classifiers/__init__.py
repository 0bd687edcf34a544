from .qks import QVQKSClassifier

__all__ = ['QVQKSClassifier']
