"""Prompt templates: 10 paraphrases per task, written for this project. Template 0 is used at
validation and test time; training draws one at random per sample (docs/method.md, Tasks).

Placeholders: {history}, {query}, {text} (title + description), {item} (an identifier).
"""
from __future__ import annotations

NRIP = (
    "Here is the user's history {history}. Please recommend the next item the user might want to click on.",
    "The user has interacted with the following: {history}. Which item will the user click on next?",
    "Given this sequence of user behaviours {history}, suggest the item the user is most likely to click next.",
    "User history: {history}. Recommend one item for this user to click on next.",
    "Based on the history {history}, predict the next item this user will engage with.",
    "This user's past activity is {history}. What should be recommended to them next?",
    "Considering the behaviours {history}, name the next item the user would click in the feed.",
    "A user has the history {history}. Guess the item they will click on next.",
    "From the user's record {history}, recommend an item they are likely to want next.",
    "History of the user: {history}. Predict the following recommended item the user clicks.",
)
NSIP = (
    "Here is the user's history {history}. The following is the user's search query <src_query>{query}. "
    "Please predict the next item the user will click on after the search.",
    "The user has the history {history} and now searches for <src_query>{query}. Which item will they click?",
    "Given the behaviours {history} and the search query <src_query>{query}, predict the clicked item.",
    "User history: {history}. Search query: <src_query>{query}. Name the item the user clicks in the results.",
    "Based on the history {history}, the user types <src_query>{query}. Predict the item they choose.",
    "A user with the past activity {history} searches <src_query>{query}. What do they click on next?",
    "Considering {history} and the query <src_query>{query}, find the item this user will click.",
    "The user issued the query <src_query>{query} after the history {history}. Predict the clicked item.",
    "For the search <src_query>{query} by a user whose history is {history}, which item will be clicked?",
    "History: {history}. Current query: <src_query>{query}. Predict the item clicked after this search.",
)
NSQP = (
    "Here is the user's history {history}. Please predict the next query the user might want to search.",
    "The user has the history {history}. What will this user search for next?",
    "Given the behaviours {history}, predict the user's next search query.",
    "User history: {history}. Generate the query the user is likely to type next.",
    "Based on the history {history}, what is the next thing this user searches for?",
    "A user with the past activity {history} opens the search box. Predict their query.",
    "Considering {history}, write the next search query of this user.",
    "From the record {history}, guess what the user will search for next.",
    "The user's history is {history}. Which query will they issue next?",
    "History: {history}. Predict the following search query.",
)
DESC2ID = (
    "Given the description of an item {text}, predict the corresponding item.",
    "Which item matches this description: {text}?",
    "Here is an item's description {text}. Identify the item.",
    "Find the item described as follows: {text}.",
    "The item is described as {text}. What is the item?",
    "Name the item with the description {text}.",
    "From the description {text}, predict which item it is.",
    "Description: {text}. Give the corresponding item.",
    "An item has the following text {text}. Output its identifier.",
    "Map this item description to its item: {text}.",
)
ID2DESC = (
    "Given the item {item}, please provide its description.",
    "Describe the item {item}.",
    "What is the description of the item {item}?",
    "Write the title and description of {item}.",
    "Item {item}: give its description.",
    "Provide the text that describes the item {item}.",
    "Tell me what the item {item} is.",
    "Generate the description of item {item}.",
    "What does the item {item} look like in the catalogue?",
    "Output the title and description for {item}.",
)

# Ad-hoc search: the NSIP templates without their history sentence (the reference fills NSIP's history
# sentence with nothing, so it disappears).
ADHOC = (
    "The following is the user's search query <src_query>{query}. "
    "Please predict the next item the user will click on after the search.",
    "The user now searches for <src_query>{query}. Which item will they click?",
    "Given the search query <src_query>{query}, predict the clicked item.",
    "Search query: <src_query>{query}. Name the item the user clicks in the results.",
    "The user types <src_query>{query}. Predict the item they choose.",
    "A user searches <src_query>{query}. What do they click on next?",
    "Considering the query <src_query>{query}, find the item this user will click.",
    "The user issued the query <src_query>{query}. Predict the clicked item.",
    "For the search <src_query>{query}, which item will be clicked?",
    "Current query: <src_query>{query}. Predict the item clicked after this search.",
)

TEMPLATES = {"nrip": NRIP, "nsip": NSIP, "nsqp": NSQP, "desc2id": DESC2ID, "id2desc": ID2DESC, "adhoc": ADHOC}
assert all(len(t) == 10 for t in TEMPLATES.values())


def template_texts() -> list[str]:
  """All fixed template text, for tokenizer training (placeholders removed)."""
  out = []
  for templates in TEMPLATES.values():
    for t in templates:
      out.append(t.replace("{history}", "").replace("{query}", "").replace("{text}", "").replace("{item}", ""))
  return out + ["; "]
