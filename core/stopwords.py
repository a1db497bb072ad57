"""English stopwords excluded from the content vocabulary of the sparse head.

Function words only (articles, pronouns, prepositions, conjunctions, auxiliaries and a few adverbs), so that a
grounded image vector spends its budget on what a caption is about. Numerals ("two", "three"), colours, and
content verbs ("wearing", "running") are content and stay. The list is the union of the usual English function
words (as in the NLTK and Lucene English lists), lower case; pieces are matched after tokenisation.
"""

from __future__ import annotations

STOPWORDS: frozenset[str] = frozenset("""
a an the this that these those there here
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself
it its itself they them their theirs themselves what which who whom whose
am is are was were be been being have has had having do does did doing will would shall should can could may
might must ought
and but if or because as until while nor so than too very just also only
of at by for with about against between into through during before after above below to from up down in out on
off over under again further then once
all any both each few more most other some such no not own same
s t d ll m o re ve y don isn aren wasn weren hasn haven hadn doesn didn won wouldn shan shouldn can't cannot
how when where why
onto upon within without toward towards via per
""".split())
