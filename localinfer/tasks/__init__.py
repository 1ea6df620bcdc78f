"""The table of tasks: name -> handler."""

from __future__ import annotations

from ..registry import check_task_name
from .audio import AudioClassification, AutomaticSpeechRecognition
from .base import Task
from .conversational import Conversational
from .feature_extraction import FeatureExtraction
from .fill_mask import FillMask
from .question_answering import QuestionAnswering
from .sentence_similarity import SentenceSimilarity
from .table_question_answering import TableQuestionAnswering
from .text2text_generation import Summarization, Text2TextGeneration, Translation
from .text_classification import TextClassification
from .text_generation import TextGeneration
from .token_classification import TokenClassification
from .vision import ImageClassification, ImageSegmentation, ObjectDetection
from .zero_shot_classification import ZeroShotClassification

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        AudioClassification(),
        AutomaticSpeechRecognition(),
        ImageClassification(),
        ImageSegmentation(),
        ObjectDetection(),
        Conversational(),
        FeatureExtraction(),
        FillMask(),
        QuestionAnswering(),
        SentenceSimilarity(),
        Summarization(),
        Text2TextGeneration(),
        TextGeneration(),
        Translation(),
        TableQuestionAnswering(),
        TextClassification(),
        TokenClassification(),
        ZeroShotClassification(),
    )
}


def get_task(name: str) -> Task:
    """The handler of `name`; a 400 naming the known tasks for an unknown one."""
    check_task_name(name)
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
