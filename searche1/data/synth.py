"""Synthetic world: a deterministic fictional encyclopedia for tests and offline demos of search agents.

:func:`generate_world` invents people, cities, countries, companies, rivers and mountains with pronounceable
made-up names, writes one to three prose passages per entity (plus distractors: namesakes that share a surname,
"New X" towns named after other towns, surname pages), and asks questions whose answers exist *only* in that
corpus, so a model can only answer them by searching:

- ``synth_single``: one fact, one passage ("In which city was Velmora Quist born?");
- ``synth_multihop``: 2-3 composed facts, each hop on a different passage ("In which country is the birthplace of
  the founder of the Bramwick Company?").

Every question has exactly one correct answer in the world (questions only follow functional relations: one
birthplace, one founder, ...), and the answer string appears verbatim in the passage holding the last hop. Each
question's ``metadata`` records ``hops``, ``gold_doc_ids`` (one per hop, in order), the ``chain`` of
(subject, relation, object, doc_id) steps, the relation ``signature`` and its ``split`` (``train`` / ``dev``).

Everything is drawn from one ``random.Random(seed)`` and only ever iterates lists and dicts, never sets or
``hash()`` of strings (salted per process), so the same seed gives byte-identical files in any process;
:func:`write_world` writes them (FlashRAG ``corpus.jsonl``, ``train/<name>.jsonl``, ``dev/<name>.jsonl`` and a
README) atomically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from searche1.data.synth_names import _NameBank
from searche1.data.types import Passage, QAExample

__all__ = [
    "DATASETS",
    "GENERATOR_VERSION",
    "MULTIHOP",
    "SINGLE",
    "World",
    "generate_world",
    "write_world",
]

#: Bumped whenever the same seed would produce a different world.
GENERATOR_VERSION = 1

SINGLE = "synth_single"
MULTIHOP = "synth_multihop"
DATASETS = (SINGLE, MULTIHOP)
SPLITS = ("train", "dev")

# --------------------------------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rel:
    subject: str  # entity kind
    obj: str | None  # entity kind of the object, None for a literal (year, occupation, ...)
    question: str  # "... {x} ...?" with x the subject's mention or a noun phrase
    np: str | None = None  # noun phrase for the object, used when the object is an inner hop


#: Functional relations only: each subject has at most one object, so every question has one answer.
_RELATIONS: dict[str, _Rel] = {
    "birthplace": _Rel("person", "city", "In which city was {x} born?", "the birthplace of {x}"),
    "birth_year": _Rel("person", None, "In what year was {x} born?"),
    "occupation": _Rel("person", None, "What was the occupation of {x}?"),
    "employer": _Rel("person", "company", "Which company did {x} work for?", "the employer of {x}"),
    "spouse": _Rel("person", "person", "Whom did {x} marry?", "the spouse of {x}"),
    "death_year": _Rel("person", None, "In what year did {x} die?"),
    "deathplace": _Rel("person", "city", "In which city did {x} die?", "the city where {x} died"),
    "founder": _Rel("company", "person", "Who founded {x}?", "the founder of {x}"),
    "company_founded": _Rel("company", None, "In what year was {x} founded?"),
    "headquarters": _Rel("company", "city", "In which city is {x} headquartered?",
                         "the city where {x} is headquartered"),
    "industry": _Rel("company", None, "Which industry is {x} known for?"),
    "country": _Rel("city", "country", "In which country is {x}?", "the country in which {x} lies"),
    "river": _Rel("city", "river", "Which river flows through {x}?", "the river that flows through {x}"),
    "city_founded": _Rel("city", None, "In what year was {x} founded?"),
    "capital": _Rel("country", "city", "What is the capital of {x}?", "the capital of {x}"),
    "independence": _Rel("country", None, "In what year did {x} become independent?"),
    "source": _Rel("river", "mountain", "On which mountain does {x} rise?", "the mountain where {x} rises"),
    "length": _Rel("river", None, "How long is {x}, in kilometres?"),
    "mountain_country": _Rel("mountain", "country", "In which country is {x}?", "the country in which {x} stands"),
    "height": _Rel("mountain", None, "How high is {x}, in metres?"),
}

_OCCUPATIONS = ("cartographer", "shipwright", "surveyor", "engineer", "chemist", "architect", "printer",
                "bookbinder", "glassblower", "clockmaker", "botanist", "astronomer", "physician", "lawyer", "banker",
                "merchant", "geologist", "translator", "engraver", "navigator", "accountant", "librarian",
                "photographer", "weaver", "brewer", "mathematician", "composer", "stonemason")
_INDUSTRIES = ("shipbuilding", "textiles", "printing", "glassmaking", "brewing", "ironworking", "clockmaking",
               "rail freight", "insurance", "publishing", "pottery", "salt trading", "coastal shipping", "banking",
               "papermaking", "rope making")
_PARENT_JOBS = ("miller", "schoolteacher", "fisherman", "carpenter", "shopkeeper", "farmer", "blacksmith", "tailor",
                "clerk", "sailor", "baker", "ferryman")
_TRAITS = ("careful record-keeping", "an unusually exact hand", "long walking tours", "patience with apprentices",
           "a sharp temper", "a large private library", "meticulous notebooks", "a dislike of travel")
_TRADES = ("wool", "timber", "salt", "copper", "horses", "lace", "cheese", "glass", "paper", "rope", "tin", "barley")
_ORIGINS = ("market town", "hill fort", "fishing village", "river crossing", "monastery settlement", "toll station")
_TERRAIN = ("coastal", "landlocked", "mountainous", "low-lying", "forested")
_COMPANY_FORMS = (("{s} Company", True), ("{s} Works", True), ("{s} & Sons", False), ("{s} Brothers", False),
                  ("{s} Holdings", False), ("{s} Trading Company", True))


@dataclass(eq=False)
class _Entity:
    kind: str
    name: str  # canonical name: passage title and answer string
    mention: str  # mid-sentence reference ("the Bramwick Company")
    facts: dict = field(default_factory=dict)  # relation -> _Entity | str
    fact_doc: dict = field(default_factory=dict)  # relation -> index into the passage drafts
    extra: dict = field(default_factory=dict)  # prose-only details (never asked about)


@dataclass
class World:
    """A generated world: the corpus and the questions about it.

    ``questions`` maps a dataset name (:data:`SINGLE`, :data:`MULTIHOP`) to all its questions; each question's
    ``metadata["split"]`` is ``"train"`` or ``"dev"``, and :attr:`train` / :attr:`dev` give the same datasets
    filtered to one split.
    """

    seed: int
    passages: list[Passage]
    questions: dict[str, list[QAExample]]
    #: ``(name, kind)`` of every entity, kind in person/company/city/country/river/mountain; names are unique.
    entities: list[tuple[str, str]] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def split(self, split: str) -> dict[str, list[QAExample]]:
        """``{dataset: [questions of that split]}`` for ``split`` in ``("train", "dev")``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return {name: [q for q in qs if q.metadata.get("split") == split] for name, qs in self.questions.items()}

    @property
    def train(self) -> dict[str, list[QAExample]]:
        return self.split("train")

    @property
    def dev(self) -> dict[str, list[QAExample]]:
        return self.split("dev")

    def passage_by_id(self) -> dict[str, Passage]:
        return {p.id: p for p in self.passages}


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class _Builder:
    def __init__(self, seed: int, n_people: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.names = _NameBank(self.rng)
        self.n_people = n_people
        self.drafts: list[tuple[str, str]] = []  # (title, text); ids are assigned after a shuffle
        self.entities: list[_Entity] = []

    # -- entities ------------------------------------------------------------------------------------------------

    def build(self) -> None:
        rng = self.rng
        n_cities = max(6, self.n_people // 2)
        n_countries = max(2, n_cities // 5)
        n_companies = max(3, self.n_people // 3)
        n_rivers = max(2, n_cities // 3)
        n_mountains = n_rivers

        countries = []
        for _ in range(n_countries):
            name = self.names.draw("country")
            countries.append(_Entity("country", name, name))
        for c in countries:
            c.facts["independence"] = str(rng.randint(1650, 1950))
            c.extra["terrain"] = rng.choice(_TERRAIN)

        mountains = []
        for _ in range(n_mountains):
            name = "Mount " + self.names.draw("mountain")
            m = _Entity("mountain", name, name)
            m.facts["mountain_country"] = rng.choice(countries)
            m.facts["height"] = str(rng.randint(800, 5200))
            m.extra["first_climbed"] = rng.randint(1780, 1960)
            mountains.append(m)

        rivers = []
        for _ in range(n_rivers):
            name = self.names.draw("river") + " River"
            r = _Entity("river", name, "the " + name)
            r.facts["source"] = rng.choice(mountains)
            r.facts["length"] = str(rng.randint(60, 1400))
            rivers.append(r)

        cities: list[_Entity] = []
        n_new = max(1, n_cities // 6)
        for _ in range(n_cities - n_new):
            name = self.names.draw("city")
            cities.append(_Entity("city", name, name))
        for old in rng.sample(cities, n_new):  # distractors: "New Ostrath" next to "Ostrath"
            city = _Entity("city", "New " + old.name, "New " + old.name)
            city.extra["named_after"] = old
            cities.append(city)
        for i, city in enumerate(cities):
            city.facts["country"] = countries[i] if i < len(countries) else rng.choice(countries)
            if rng.random() < 0.75:
                city.facts["river"] = rng.choice(rivers)
            city.extra["population"] = rng.randint(3, 900) * 1000
            city.extra["trade"] = rng.choice(_TRADES)
            city.extra["origin"] = rng.choice(_ORIGINS)
        for city in cities:
            old = city.extra.get("named_after")
            lo = 700 if old is None else 1500
            city.facts["city_founded"] = str(rng.randint(lo, 1800))
        for city in cities:  # a "New" town is younger than its namesake
            old = city.extra.get("named_after")
            if old is not None and int(city.facts["city_founded"]) <= int(old.facts["city_founded"]):
                city.facts["city_founded"] = str(int(old.facts["city_founded"]) + rng.randint(30, 200))
        for country in countries:
            own = [c for c in cities if c.facts["country"] is country]
            country.facts["capital"] = rng.choice(own)

        # people: some surnames are shared (namesakes are the person-level distractors)
        n_surnames = max(2, (self.n_people * 3) // 5)
        surnames = [self.names.draw("surname") for _ in range(n_surnames)]
        people: list[_Entity] = []
        for i in range(self.n_people):
            female = rng.random() < 0.5
            given = self.names.draw("given_f" if female else "given_m")
            surname = surnames[i] if i < n_surnames else rng.choice(surnames)
            name = f"{given} {surname}"
            p = _Entity("person", name, name)
            p.extra.update(female=female, surname=surname)
            by = rng.randint(1780, 1920)
            p.facts["birth_year"] = str(by)
            p.facts["birthplace"] = rng.choice(cities)
            p.facts["occupation"] = rng.choice(_OCCUPATIONS)
            dy = by + rng.randint(50, 88)
            p.facts["death_year"] = str(dy)
            p.facts["deathplace"] = p.facts["birthplace"] if rng.random() < 0.3 else rng.choice(cities)
            p.extra["parent_job"] = rng.choice(_PARENT_JOBS)
            p.extra["trait"] = rng.choice(_TRAITS)
            p.extra["studied_in"] = rng.choice(cities) if rng.random() < 0.5 else None
            people.append(p)
        rng.shuffle(people)  # so namesakes are not adjacent in generation order

        for i, p in enumerate(people):  # marriages: pairs of similar age
            if "spouse" in p.facts or rng.random() < 0.45:
                continue
            by = int(p.facts["birth_year"])
            cands = [q for q in people[i + 1:]
                     if "spouse" not in q.facts and abs(int(q.facts["birth_year"]) - by) <= 12]
            if cands:
                q = rng.choice(cands)
                p.facts["spouse"], q.facts["spouse"] = q, p
                year = max(by, int(q.facts["birth_year"])) + rng.randint(20, 32)
                p.extra["married"] = q.extra["married"] = year

        companies: list[_Entity] = []
        company_names: list[str] = []
        founders = rng.sample(people, n_companies)
        stems_by_company: list[str] = []
        for founder in founders:
            r = rng.random()
            if r < 0.35:
                stem = founder.extra["surname"]  # named after its founder: other people share that surname
                forms = _COMPANY_FORMS[:4]
            elif r < 0.5 and stems_by_company:
                stem = rng.choice(stems_by_company)  # a sister firm: "Bramwick Company" vs "Bramwick Works"
                forms = _COMPANY_FORMS
            else:
                stem = self.names.draw("company")
                forms = _COMPANY_FORMS
            options = [(f.format(s=stem), art) for f, art in forms if f.format(s=stem) not in company_names]
            if not options:
                stem = self.names.draw("company")
                options = [(f.format(s=stem), art) for f, art in forms]
            name, article = rng.choice(options)
            company_names.append(name)
            stems_by_company.append(stem)
            c = _Entity("company", name, ("the " if article else "") + name)
            c.facts["founder"] = founder
            c.facts["company_founded"] = str(int(founder.facts["birth_year"]) + rng.randint(24, 45))
            c.facts["headquarters"] = rng.choice(cities)
            c.facts["industry"] = rng.choice(_INDUSTRIES)
            c.extra["staff"] = rng.randint(2, 90) * 50
            companies.append(c)

        for p in people:  # employers: companies that existed during the person's working life
            by = int(p.facts["birth_year"])
            ok = [c for c in companies if by - 90 <= int(c.facts["company_founded"]) <= by + 30]
            if ok and rng.random() < 0.85:
                c = rng.choice(ok)
                p.facts["employer"] = c
                start = max(by + rng.randint(18, 30), int(c.facts["company_founded"]) + 1)
                p.extra["joined"] = start
                p.extra["years"] = rng.randint(4, 30)

        self.entities = people + companies + cities + countries + rivers + mountains
        names = [e.name for e in self.entities]
        if len(set(names)) != len(names):  # pragma: no cover - guarded by the name bank; questions rely on it
            raise AssertionError("synthetic world has duplicate entity names")
        self.people, self.companies, self.cities = people, companies, cities
        self.countries, self.rivers, self.mountains = countries, rivers, mountains

    # -- passages ------------------------------------------------------------------------------------------------

    def _add(self, ent: _Entity | None, title: str, sentences: list[str], facts: tuple[str, ...] = ()) -> None:
        idx = len(self.drafts)
        self.drafts.append((title, " ".join(sentences)))
        if ent is not None:
            for rel in facts:
                if rel in ent.facts:
                    ent.fact_doc[rel] = idx

    def write_passages(self) -> None:
        rng = self.rng
        for p in self.people:
            f = p.facts
            she, her, child = ("she", "her", "daughter") if p.extra["female"] else ("he", "his", "son")
            name, by, bp = p.name, f["birth_year"], f["birthplace"].name
            style = rng.randrange(3)
            if style == 0:
                s = [f"{name} (born {by}) was born in {bp}, the {child} of {_a(p.extra['parent_job'])}."]
            elif style == 1:
                s = [f"{name} was born in {by} in the city of {bp}.",
                     f"{_cap(her)} father worked as {_a(p.extra['parent_job'])}."]
            else:
                s = [f"Born in {bp} in {by}, {name} was the {child} of {_a(p.extra['parent_job'])}."]
            if p.extra["studied_in"] is not None and p.extra["studied_in"] is not f["birthplace"]:
                s.append(f"{_cap(she)} later studied in {p.extra['studied_in'].name}.")
            else:
                s.append(f"{_cap(she)} was educated at home.")
            self._add(p, name, s, ("birth_year", "birthplace"))

            occ = f["occupation"]
            if "employer" in f:
                emp = f["employer"].mention
                if rng.random() < 0.5:
                    s = [f"{name} worked as {_a(occ)} for most of {her} life.",
                         f"In {p.extra['joined']} {she} joined {emp}, where {she} stayed for {p.extra['years']} years."]
                else:
                    s = [f"Trained as {_a(occ)}, {name} spent {p.extra['years']} years working for {emp}, "
                         f"starting in {p.extra['joined']}."]
            else:
                s = [f"{name} worked as {_a(occ)}, mostly on {her} own account."]
            s.append(f"{_cap(she)} was known among colleagues for {p.extra['trait']}.")
            self._add(p, name, s, ("occupation", "employer"))

            s = []
            if "spouse" in f:
                s.append(f"In {p.extra['married']} {name} married {f['spouse'].name}.")
            dp, dy = f["deathplace"].name, f["death_year"]
            if rng.random() < 0.5:
                s.append(f"{name} died in {dp} in {dy}.")
            else:
                s.append(f"{_cap(she)} died in {dy} in {dp}.")
            if "spouse" not in f:
                s.append(f"{_cap(she)} never married.")
            s.append(f"{_cap(her)} letters were later collected and published.")
            self._add(p, name, s, ("spouse", "death_year", "deathplace"))

        for c in self.companies:
            f = c.facts
            if rng.random() < 0.5:
                s = [f"{_cap(c.mention)} was founded in {f['company_founded']} by {f['founder'].name}.",
                     f"It is headquartered in {f['headquarters'].name}."]
            else:
                s = [f"{_cap(c.mention)} is a firm headquartered in {f['headquarters'].name}.",
                     f"{f['founder'].name} founded it in {f['company_founded']}."]
            self._add(c, c.name, s, ("founder", "company_founded", "headquarters"))
            s = [f"{_cap(c.mention)} is best known for {f['industry']}.",
                 f"At its peak it employed some {c.extra['staff']:,} people."]
            self._add(c, c.name, s, ("industry",))

        for city in self.cities:
            f = city.facts
            s = [f"{city.name} is a city in {f['country'].name}."]
            if "river" in f:
                s.append(rng.choice([f"It lies on the {f['river'].name}.",
                                     f"It was built along the banks of the {f['river'].name}."]))
            else:
                s.append("It lies far from any large river.")
            s.append(f"About {city.extra['population']:,} people live there.")
            self._add(city, city.name, s, ("country", "river"))
            s = [f"{city.name} was founded in {f['city_founded']} as {_a(city.extra['origin'])}."]
            old = city.extra.get("named_after")
            if old is not None:
                s.append(f"Its first settlers named it after {old.name}.")
            s.append(f"Today it is known for its {city.extra['trade']}.")
            self._add(city, city.name, s, ("city_founded",))

        for country in self.countries:
            f = country.facts
            s = [f"{country.name} is {_a(country.extra['terrain'])} country.",
                 f"Its capital is {f['capital'].name}.",
                 f"{country.name} became independent in {f['independence']}."]
            self._add(country, country.name, s, ("capital", "independence"))
            others = [c.name for c in self.countries if c is not country]
            neighbours = rng.sample(others, min(len(others), rng.randint(1, 3)))
            trades = rng.sample(_TRADES, 2)
            s = [f"The economy of {country.name} rests on {trades[0]} and {trades[1]}.",
                 f"It shares borders with {_join_names(neighbours)}."]
            self._add(country, country.name, s)

        for r in self.rivers:
            f = r.facts
            s = [f"The {r.name} rises on {f['source'].name}",
                 f"and runs for {f['length']} kilometres before it reaches the sea."]
            self._add(r, r.name, [" ".join(s)], ("source", "length"))
        for m in self.mountains:
            f = m.facts
            s = [f"{m.name} is a mountain in {f['mountain_country'].name}, rising to {f['height']} metres.",
                 f"It was first climbed in {m.extra['first_climbed']}."]
            self._add(m, m.name, s, ("mountain_country", "height"))

        by_surname: dict[str, list[str]] = {}
        for p in self.people:
            by_surname.setdefault(p.extra["surname"], []).append(p.name)
        for surname, names in by_surname.items():  # distractor pages listing namesakes
            if len(names) >= 2:
                self._add(None, f"{surname} (surname)",
                          [f"{surname} is a family name.", f"People with this surname include {_join_names(names)}."])

    def finalize_ids(self) -> tuple[list[Passage], dict[int, str]]:
        order = list(range(len(self.drafts)))
        self.rng.shuffle(order)
        ids: dict[int, str] = {}
        passages = []
        for n, idx in enumerate(order):
            pid = f"syn-{n:06d}"
            ids[idx] = pid
            title, text = self.drafts[idx]
            passages.append(Passage.from_title_text(pid, title, text))
        return passages, ids

    # -- questions -----------------------------------------------------------------------------------------------

    def facts_of(self, ent: _Entity) -> list[str]:
        return [rel for rel in _RELATIONS if _RELATIONS[rel].subject == ent.kind and rel in ent.facts]

    def chains(self, max_hops: int) -> list[list[tuple[_Entity, str]]]:
        """Every chain of (subject, relation) hops through distinct entities, 1..max_hops long."""
        out: list[list[tuple[_Entity, str]]] = []

        def walk(chain: list[tuple[_Entity, str]], seen: list[_Entity]) -> None:
            ent = seen[-1]
            for rel in self.facts_of(ent):
                obj = ent.facts[rel]
                if isinstance(obj, _Entity) and any(obj is e for e in seen):
                    continue
                new = chain + [(ent, rel)]
                out.append(new)
                if isinstance(obj, _Entity) and len(new) < max_hops:
                    walk(new, seen + [obj])

        for ent in self.entities:
            walk([], [ent])
        return out


def _answer(obj) -> str:
    return obj.name if isinstance(obj, _Entity) else obj


def _question_text(chain: list[tuple[_Entity, str]]) -> str:
    x = chain[0][0].mention
    for _, rel in chain[:-1]:
        x = _RELATIONS[rel].np.format(x=x)
    return _RELATIONS[chain[-1][1]].question.format(x=x)


def _stratified(rng: random.Random, items: list, key, n: int) -> list:
    """Up to ``n`` items, round-robin over the groups of ``key`` (groups and members in shuffled order)."""
    groups: dict[str, list] = {}
    for it in items:
        groups.setdefault(key(it), []).append(it)
    names = list(groups)
    rng.shuffle(names)
    for g in names:
        rng.shuffle(groups[g])
    picked: list = []
    depth = 0
    while len(picked) < n and any(depth < len(groups[g]) for g in names):
        for g in names:
            if depth < len(groups[g]) and len(picked) < n:
                picked.append(groups[g][depth])
        depth += 1
    return picked


def generate_world(seed: int = 0, n_people: int = 60, *, n_train: int = 200, n_dev: int = 100) -> World:
    """Generate the world for ``seed``: about ``5.5 * n_people`` passages and, per dataset, up to ``n_train`` train
    and ``n_dev`` dev questions (fewer when a small world has fewer distinct questions; the 2:1 ratio is kept).

    ``synth_multihop`` is half 2-hop and half 3-hop where the world allows. Deterministic in all arguments.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if n_people < 6:
        raise ValueError(f"n_people must be >= 6, got {n_people}")
    if n_train < 0 or n_dev < 0 or n_train + n_dev == 0:
        raise ValueError(f"n_train and n_dev must be >= 0 and not both 0, got {n_train}, {n_dev}")

    b = _Builder(seed, n_people)
    b.build()
    b.write_passages()
    passages, ids = b.finalize_ids()
    contents = {p.id: p.contents for p in passages}
    rng = b.rng

    def example(dataset: str, chain: list[tuple[_Entity, str]]) -> QAExample:
        steps = []
        for subj, rel in chain:
            steps.append({"subject": subj.name, "relation": rel, "object": _answer(subj.facts[rel]),
                          "doc_id": ids[subj.fact_doc[rel]]})
        return QAExample(
            id="", question=_question_text(chain), answers=[steps[-1]["object"]], dataset=dataset,
            metadata={"hops": len(chain), "gold_doc_ids": [s["doc_id"] for s in steps], "chain": steps,
                      "signature": ">".join(rel for _, rel in chain)},
        )

    def honest(chain: list[tuple[_Entity, str]]) -> bool:
        """The answer must not be readable off an earlier hop's passage (so every hop is needed)."""
        ans = _answer(chain[-1][0].facts[chain[-1][1]])
        return not any(ans in contents[ids[s.fact_doc[r]]] for s, r in chain[:-1])

    all_chains = b.chains(3)
    total = n_train + n_dev
    single = _stratified(rng, [c for c in all_chains if len(c) == 1], lambda c: c[0][1], total)
    multi_pool = [c for c in all_chains if len(c) > 1 and honest(c)]
    two = _stratified(rng, [c for c in multi_pool if len(c) == 2], lambda c: ">".join(r for _, r in c), total)
    three = _stratified(rng, [c for c in multi_pool if len(c) == 3], lambda c: ">".join(r for _, r in c), total)
    n_three = min(len(three), total // 2)
    multi = three[:n_three] + two[: total - n_three]

    questions: dict[str, list[QAExample]] = {}
    for dataset, chains in ((SINGLE, single), (MULTIHOP, multi)):
        chains = list(chains)
        rng.shuffle(chains)
        n_tr = n_train if len(chains) >= total else round(len(chains) * n_train / total)
        exs = []
        for i, chain in enumerate(chains):
            ex = example(dataset, chain)
            ex.id = f"{dataset}_{i:04d}"
            ex.metadata["split"] = "train" if i < n_tr else "dev"
            exs.append(ex)
        questions[dataset] = exs

    params = {"seed": seed, "n_people": n_people, "n_train": n_train, "n_dev": n_dev,
              "generator_version": GENERATOR_VERSION}
    entities = [(e.name, e.kind) for e in b.entities]
    return World(seed=seed, passages=passages, questions=questions, entities=entities, params=params)


from searche1.data.synth_write import write_world  # noqa: E402  (re-exported: the public writer)
