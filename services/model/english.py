"""General English text for the embedded tokenizer's corpus, so chat prose tokenizes well."""

from __future__ import annotations

import random
from collections.abc import Iterator

# Hand-written chat lines: greetings, instructions and explanations as people type them,
# with the punctuation and contractions of real chat.
PHRASES = (
    "Hello! How can I help you today?",
    "Thanks for your question. Let me think about it step by step.",
    "Could you explain what you mean by that?",
    "I'm not sure I understand the problem. Can you give me an example?",
    "Sure, here's a short summary of the main points.",
    "You are a helpful assistant. Answer clearly and briefly.",
    "Please solve the following problem and show your reasoning.",
    "First, we read the question carefully. Then we write down what we know.",
    "That's a good point, but it doesn't change the final answer.",
    "Let's check the result again to make sure it is correct.",
    "Wait, I made a mistake in the previous step. Let me fix it.",
    "The answer is correct because each step follows from the one before.",
    "If all cats are animals and some animals are black, are some cats black?",
    "No, that does not follow: the black animals might not be cats.",
    "What is the total cost if each apple costs three dollars?",
    "How many hours are there in a week? There are 168 hours.",
    "The train leaves at 9:45 and arrives at 12:30, so the trip takes 2 hours and 45 minutes.",
    "Therefore, the result is 42.",
    "In conclusion, the argument is valid but one premise is false.",
    "Can you write a short poem about the sea?",
    "I don't know the answer, but here is how you could find out.",
    "Is there anything else you would like to know?",
    "Good morning! What would you like to work on?",
    "Here is the corrected version of your sentence.",
    "We're going to need a bigger boat, he said, looking at the water.",
    "Remember to save your work before you close the program.",
    "Every number that ends in zero is divisible by ten.",
    "You're right, I shouldn't have assumed that. They'll see it differently.",
    "Step 1: write the equation. Step 2: simplify both sides. Step 3: check.",
    "Note: the list below is sorted from smallest to largest (ascending order).",
)

# A plain lexicon of common words; inflections are made by rule below. Irregular forms come
# out wrong now and then, which costs a few vocabulary entries and nothing else.
NOUNS = """
time year people way day man woman child world life hand part eye place work week case
point number group problem fact question answer result reason idea system program story
book page word letter sentence paragraph language name friend family mother father brother
sister teacher student school class lesson house home room door window table chair bed
kitchen garden tree flower grass river lake sea ocean mountain hill road street city town
country state village market shop store bank office company business job money price cost
dollar cent coin bill card ticket car bus train plane boat bicycle ship trip journey
morning evening night hour minute second month season spring summer autumn winter weather
rain snow wind sun moon star sky cloud fire water air earth stone rock sand glass paper box
bag bottle cup plate bowl spoon knife fork bread cake apple orange banana egg milk cheese
meat fish chicken rice soup salt sugar tea coffee juice dinner lunch breakfast meal food
animal dog cat horse cow bird sheep pig mouse rabbit lion bear wolf fox duck goat insect
body head face hair nose mouth ear arm leg foot finger heart mind voice smile health doctor
nurse hospital medicine computer machine phone screen camera picture photo music song movie
game sport team player ball goal match race winner prize gift party holiday birthday
question method rule law court government leader president member army war peace history
science nature energy power light sound color shape line circle square triangle angle side
edge corner center middle top bottom front back left right area size length width height
weight speed distance amount total sum difference product fraction percent ratio rate
average value level degree step stage process plan project task list order set pair couple
piece bit kind type sort form example choice decision chance risk danger safety problem
solution test exam grade score mark error mistake truth lie fact opinion belief feeling
fear hope love anger joy surprise interest attention memory thought dream plan purpose
effort skill talent knowledge education experience practice training research study
report article news paper magazine library museum theater church hotel restaurant airport
station bridge tower wall floor roof stairs field farm forest island desert beach coast
account address age agreement airline album answer apartment application appointment
argument arrival article artist attempt audience author baby background balance basket
battery beauty beginning bicycle blanket board boss brain branch breath brick budget
building button cable calendar campaign candle capital captain career carpet castle cause
ceiling century chain chapter character chart chemistry chocolate citizen climate clock
clothes coach collection college comment community competition computer concert condition
conference contract conversation copy corner council courage cousin crowd culture curtain
customer damage data daughter deal debt definition delivery department description detail
device diagram dictionary diet direction discussion disease document drawer driver economy
editor election engine engineer entrance environment equipment evidence exercise factory
feature festival file film finance flight floor focus forecast fruit furniture future
gallery garage gate generation grammar guest guide habit hall handle heat holiday honey
husband image income industry information instrument insurance island jacket journal judge
key keyboard king kingdom ladder landscape lawyer layer leaf lecture lesson level license
lock machine manager map marriage material meeting message metal method minister mirror
model moment motor mountain nation neighbor network noise note object ocean option output
owner package pain painter palace parent partner passenger pattern payment pencil pension
period permission person phrase physics pilot planet platform pocket poem poet police
policy population position potato pressure principle prison profit property proposal queen
quality quantity radio reader recipe region relation religion request resource response
salary sample scene schedule secret secretary section sector sense series service session
shirt shoulder signal silver singer situation society soldier source space speaker speech
spirit statement statue stomach strategy structure subject success suggestion supply
surface survey symbol teacher temperature tennis theory thing thread tool topic tourist
towel traffic transport treatment trouble truck tunnel uncle union unit university user
vacation valley vegetable vehicle version victory video village visitor volume wallet
wheel wife window wing winner witness worker writer youth zone
"""
VERBS = """
walk talk work play help call ask answer look watch listen learn teach read write count
add subtract multiply divide solve check compare measure share start finish open close
move turn push pull carry lift drop hold fill empty clean wash cook bake paint draw build
fix repair change follow lead join visit travel arrive return leave stay wait rest sleep
dream laugh cry smile agree disagree argue explain describe decide choose prefer plan
prepare collect gather order deliver receive send offer accept refuse allow prevent avoid
enjoy love hate like want need wish hope expect believe doubt wonder guess imagine
remember forget notice recognize discover search hunt test prove improve increase reduce
raise lower cover protect save spend earn cost pay borrow lend own belong contain include
create design develop produce perform present report record print publish translate
type click press select copy paste delete store load install update connect train
accept achieve admire admit advise affect afford analyze announce apologize appear apply
approve arrange attach attack attend attract bathe behave belong blame boil borrow bounce
breathe brush calculate celebrate challenge charge chase cheer chew claim climb combine
comfort complain complete concentrate concern confirm consider continue control convince
correct cough crash cross damage dance deliver depend deserve destroy detect disappear
divide dress earn educate encourage enter escape establish estimate examine excite excuse
exercise exist expand explore express extend fail fasten fetch file float flow fold force
frighten gain glue grab greet guarantee guard handle hang happen harm head heat hurry
identify ignore imagine impress inform inject injure instruct intend interrupt introduce
invent invite jog joke judge jump kick kill kiss knock label land last launch level lick
limit list live lock manage mark marry match matter melt memorize mention miss mix murmur
nod obey object observe obtain occur offend operate organize owe pack park pass pause perform
permit pick place plant please point polish pour practice praise pray predict pretend
print produce promise propose provide publish punish purchase question race rain reach
realize recommend record reflect register regret reject relax release rely remain remove
repeat replace reply represent request rescue respond review rinse risk rule rush satisfy
scratch scream serve settle shelter shiver shop sign signal sketch ski smash sneeze snore
spell spill spoil spray squeeze stamp stare steer step stir stretch study succeed suffer
suggest supply support suppose surprise surround suspect switch taste tempt thank tick
tickle touch trace trade transfer trap treat tremble trust try unite unlock use vanish
warn waste wave weigh welcome whisper wink worry wrap yawn yell zoom
"""
ADJECTIVES = """
good bad new old young big small large little long short high low early late hot cold warm
cool fast slow quick easy hard simple difficult clear dark bright light heavy strong weak
happy sad angry calm quiet loud rich poor cheap expensive full empty clean dirty safe
dangerous true false right wrong correct exact certain possible important useful careful
careless beautiful ugly strange normal special common rare real whole single double main
final first last next previous same different similar equal odd even positive negative
red blue green yellow black white brown gray orange purple round flat deep wide narrow
thick thin sharp soft smooth rough fresh dry wet sweet sour bitter free busy ready sure
able active actual afraid alive ancient annual anxious automatic available average aware
basic bold brave brief broad capable central cheerful chief civil classic clever comfortable
complete complex confident constant crazy creative critical cruel curious current daily
dear decent direct distant divine eager efficient elegant empty endless entire essential
exciting familiar famous fancy fierce foreign formal fortunate frequent friendly funny
general gentle genuine giant global golden grateful guilty handsome healthy helpful
historic honest huge humble hungry ideal illegal immediate innocent intense internal
jealous junior kind lazy legal local lonely lovely loyal lucky magic major mental mild
minor modern modest moral musical mutual national native natural nervous noble obvious
official open ordinary original patient peaceful perfect personal physical pleasant polite
popular powerful practical precious pretty primary private proper proud public pure rapid
rational raw recent regular relevant remote rural secure senior serious severe silent
silly sincere slight social solid spare square stable steady strict stupid sudden
suitable superb tall tender terrible thirsty tight tiny total tough tropical typical unique
upper urban usual valid various vast visible vital wild wise wooden worried
"""
ADVERBS = """
quickly slowly carefully easily clearly quietly loudly always never often sometimes usually
rarely already still again soon later today tomorrow yesterday now then here there almost
nearly exactly really very quite rather too also only just even probably certainly
"""
DETERMINERS = ("the", "a", "this", "that", "every", "each", "some", "no", "my", "your", "our",
               "their", "his", "her", "one", "another")
PRONOUNS = ("I", "you", "we", "they", "he", "she", "it", "someone", "everyone", "nobody")
NAMES = """
Alice Bob Carol David Emma Frank Grace Henry Isabel Jack Karen Leo Maria Nina Oscar Paul
Quinn Rosa Sam Tom Uma Victor Wendy Xavier Yara Zoe Anna Ben Chloe Daniel Ella Felix Hannah
Ivan Julia Kevin Laura Mike Noah Olivia Peter Ruby Sarah Tim Vera William Amy Chris Diana
Ethan Fiona George Helen James Kate Lucas Mia Nathan Omar Priya Raj Sofia Thomas Yuki Lily
London Paris Berlin Tokyo Rome Madrid Cairo Lima Oslo Dublin Vienna Prague Sydney Toronto
Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May
June July August September October November December English French Spanish German
"""
PREPOSITIONS = ("in", "on", "at", "by", "with", "without", "from", "to", "into", "under",
                "over", "near", "after", "before", "during", "behind", "across", "through")
CONNECTIVES = ("because", "although", "so", "but", "and then", "while", "since", "if",
               "unless", "when", "after", "before", "until", "whereas", "therefore",
               "however,", "meanwhile,", "so that", "even though", "as soon as")
PUNCTUATION = (".", ".", ".", ".", "!", "?", ";", ":")


def _words(block: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(block.split()))


_NOUNS = _words(NOUNS)
_VERBS = _words(VERBS)
_ADJECTIVES = _words(ADJECTIVES)
_ADVERBS = _words(ADVERBS)
_NAMES = _words(NAMES)
_VOWELS = "aeiou"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def _verb_form(verb: str, form: str) -> str:
    if form == "s":
        return _plural(verb)
    stem = verb[:-1] if verb.endswith("e") else verb
    if form == "ed":
        if verb.endswith("y") and verb[-2] not in _VOWELS:
            return verb[:-1] + "ied"
        return stem + "ed"
    if form == "ing":
        return stem + "ing"
    return verb


def _adjective(rng: random.Random) -> str:
    word = rng.choice(_ADJECTIVES)
    roll = rng.random()
    if roll < 0.1:
        return f"{word[:-1] if word.endswith('e') else word}er"
    if roll < 0.2:
        return f"{word[:-1] if word.endswith('e') else word}est"
    if roll < 0.3:
        return f"very {word}"
    return word


def _adverb(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_ADVERBS)
    word = rng.choice(_ADJECTIVES)
    return f"{word[:-1]}ily" if word.endswith("y") else f"{word}ly"


def _noun_phrase(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(PRONOUNS)
    if roll < 0.15:
        return rng.choice(_NAMES)
    noun = rng.choice(_NOUNS)
    adjective = f"{_adjective(rng)} " if rng.random() < 0.4 else ""
    if roll < 0.35:
        return f"{rng.randint(2, 999)} {adjective}{_plural(noun)}"
    if roll < 0.5:
        quantity = rng.choice(("many", "some", "few", "all", "those", "these", "several"))
        return f"{quantity} {adjective}{_plural(noun)}"
    return f"{rng.choice(DETERMINERS)} {adjective}{noun}"


def _clause(rng: random.Random) -> str:
    form = rng.choice(("s", "ed", "ed", "ing", "base"))
    verb = _verb_form(rng.choice(_VERBS), form)
    if form == "ing":
        verb = f"{rng.choice(('is', 'was', 'will be', 'has been'))} {verb}"
    elif form == "base":
        modal = rng.choice(("will", "can", "should", "might", "must", "cannot", "does not"))
        verb = f"{modal} {verb}"
    adverb = f" {_adverb(rng)}" if rng.random() < 0.3 else ""
    tail = ""
    if rng.random() < 0.4:
        tail = f" {rng.choice(PREPOSITIONS)} {_noun_phrase(rng)}"
    return f"{_noun_phrase(rng)} {verb} {_noun_phrase(rng)}{adverb}{tail}"


def _sentence(rng: random.Random) -> str:
    text = _clause(rng)
    if rng.random() < 0.2:
        opener = rng.choice((_adverb(rng), f"{rng.choice(PREPOSITIONS)} {_noun_phrase(rng)}"))
        text = f"{opener[0].upper()}{opener[1:]}, {text}"
    if rng.random() < 0.35:
        text += f", {rng.choice(CONNECTIVES)} {_clause(rng)}"
    if rng.random() < 0.1:
        text = f'"{text}," {rng.choice(PRONOUNS)} said'
    if rng.random() < 0.05:
        text += f" ({rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)})"
    return text[0].upper() + text[1:] + rng.choice(PUNCTUATION)


def english_corpus(count: int, seed: int = 0) -> Iterator[str]:
    """Yield `count` short English paragraphs: fixed chat phrases mixed with generated prose."""
    rng = random.Random(seed)
    for _ in range(count):
        parts = [_sentence(rng) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.3:
            parts.insert(rng.randint(0, len(parts)), rng.choice(PHRASES))
        yield rng.choice((" ", " ", "\n", "\n\n")).join(parts)
