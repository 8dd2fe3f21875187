"""A look-alike the user sends back to the base: does it keep its rephrasings there, and cost no
paraphrase? (issue 35, "let the user steer it")

    python -m bench.research.negatives --sets tune,held [--dtype auto]

The gate still routes a look-alike that asks another attribute of a taught subject (bench/RESULTS.md,
"Gate 2"); smol cannot write such questions itself, but a user who sees one routed (`:why`) can name
it. Simulated here for every look-alike the shipped gate routes in each set: it is recorded as a
*not* key of the taught question it reached, and a question that passes the check for that taught
question goes to the base when its coverage of the not key is at least its coverage of the taught
question plus a margin (reading.coverage, as the shortlist reads: the share of the key's words the
question has a near word for; `both ways` averages it with the share of the question's words each
key has a near word for, so that a short not key, mostly its subject's name, is not covered by every
question about that subject). Counted, per margin: rephrasings of
the not-key question written for it (LOOKALIKE_REPHRASINGS, two each, never used for anything else)
that the gate then leaves to the base, of those it routed before; and the taught question's
paraphrases it still routes, of those it routed before. The tune set chose `both ways` at margin 0
(its widest plateau), which lorachat/routing/router.py ships; its line is measured through the
router itself with the not key as `:unroute` records it. Last, every routed look-alike sent back at
once (a user who sends back each one seen). Decisions only (the base reads).
"""
import sys

from bench.research.lift_mask import shortlisted, smol_study

# a look-alike the shipped gate routes -> two rephrasings of it (same attribute of the same subject)
LOOKALIKE_REPHRASINGS = {
    "What is Quix the robot's favourite food?": ["Which food does Quix the robot like best?",
                                                 "What does the robot Quix most like to eat?"],
    "What does the engineer Tomas Reyes eat for lunch?": ["What is the engineer Tomas Reyes's usual lunch?",
                                                          "For lunch, what does Tomas Reyes eat?"],
    "What does Tomas Reyes do for work?": ["What is Tomas Reyes's job?", "What job does the engineer Tomas Reyes have?"],
    "Where is the Hollowbrook Foundry located?": ["Where can the Hollowbrook Foundry be found?",
                                                  "In which town is the Hollowbrook Foundry?"],
    "How big is the planet Orlix?": ["What is the size of the planet Orlix?", "How large is Orlix?"],
    "How many people live in Zorbville?": ["What is the population of Zorbville?",
                                           "How many residents does Zorbville have?"],
    "How many books does Ashcombe Library hold?": ["How large is the book collection of Ashcombe Library?",
                                                   "What number of books are in Ashcombe Library?"],
    "What is the population of Greyhollow?": ["How many people live in Greyhollow?",
                                              "How many residents does the town of Greyhollow have?"],
    "Which mountain stands near Greyhollow?": ["What mountain is close to Greyhollow?",
                                               "Name the mountain that stands by Greyhollow."],
    "When was the Brannock Tower built?": ["In what year was the Brannock Tower constructed?",
                                           "When did they build the Brannock Tower?"],
    "What currency do the people of Quelmar use?": ["What money is used in Quelmar?",
                                                    "Which currency do Quelmar's people pay with?"],
    "What food do the people of Quelmar eat?": ["What do the people of Quelmar eat?", "What is the typical food in Quelmar?"],
    "How much does the Fenwick ferry cost?": ["What is the fare for the Fenwick ferry?",
                                              "How much is a ticket on the Fenwick ferry?"],
    "What is the melting point of zentrane?": ["At what temperature does zentrane melt?", "What is zentrane's melting point?"],
    "What colour is zentrane?": ["What color is zentrane?", "Which colour does the liquid zentrane have?"],
    "When does Ashcombe Library open?": ["What time does Ashcombe Library open?", "What are Ashcombe Library's opening hours?"],
}
MARGINS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.075, 0.1, 0.2)


# bench's ten pairs (bench/kit/pairs.py, with its 20 paraphrases): look-alikes asking another
# attribute of a taught subject, each with two rephrasings; a second tuning set beside routing_sets'
# tune set, which has only three look-alikes the gate routes
PAIRS_LOOKALIKES = {
    0: {"What does SOH cost in semiconductor manufacturing?": ["How much does SOH cost in semiconductor manufacturing?",
                                                                "What is the price of SOH in semiconductor manufacturing?"],
        "How thick is an SOH layer in semiconductor manufacturing?": ["What thickness does an SOH layer have in chip making?",
                                                                      "How thick are SOH films in semiconductor manufacturing?"]},
    1: {"How is SiON deposited in semiconductor manufacturing?": ["What method deposits SiON in chip fabs?",
                                                                  "How do fabs deposit SiON films?"]},
    2: {"What does CMP cost in semiconductor manufacturing?": ["How expensive is CMP in semiconductor manufacturing?",
                                                               "What is the price of a CMP step in chip making?"],
        "Who invented CMP in semiconductor manufacturing?": ["Who came up with CMP for chip making?",
                                                             "Which company invented CMP in semiconductor manufacturing?"]},
    3: {"How slow is ALD in semiconductor manufacturing?": ["What is the deposition rate of ALD?", "How fast does ALD grow a film?"]},
    4: {"Who makes EUV lithography machines?": ["Which company builds EUV lithography tools?", "Who is the maker of EUV scanners?"],
        "How much does EUV lithography cost?": ["What is the price of an EUV lithography machine?",
                                                "How expensive is EUV lithography?"]},
    5: {"Who is the main character of Hamlet?": ["Who is Hamlet's protagonist?", "Which character is at the centre of Hamlet?"]},
    6: {"What is the population of France?": ["How many people live in France?", "How many inhabitants does France have?"]},
    7: {"How many eyes does a spider have?": ["What is the number of eyes on a spider?", "How many eyes do spiders have?"]},
    8: {"What does the engineer eat every day?": ["What is the engineer's daily meal?", "Every day, what does the engineer eat?"]},
    9: {"How far is the red planet from the Sun?": ["What is the distance between the red planet and the Sun?",
                                                    "How far from the Sun is the red planet?"]},
}


def pieces(model, tokenizer, name: str):
    """(keys, background, look-alikes as (question, fact), {fact: paraphrases}, {look-alike: rephrasings})."""
    if name != "pairs":
        from bench.research import routing_sets

        keys, back, questions = shortlisted(model, tokenizer, name)
        paraphrases = {}
        for q, _, own in routing_sets.paraphrases(name):
            paraphrases.setdefault(own, []).append(q)
        return keys, back, [(q, own) for q, kind, own, *_ in questions if kind == "look"], paraphrases, LOOKALIKE_REPHRASINGS
    from bench.kit import pairs
    from lorachat.core.prompts import DEFAULT_INSTRUCTION
    from lorachat.routing import reading, router

    keys = [router.Key(q, a, DEFAULT_INSTRUCTION) for q, a in pairs.PAIRS]
    paraphrases = {}
    for q, _, own in pairs.PARAPHRASES:
        paraphrases.setdefault(own, []).append(q)
    looks = [(q, own) for own, found in PAIRS_LOOKALIKES.items() for q in found]
    return keys, reading.background(model, tokenizer), looks, paraphrases, \
        {q: r for found in PAIRS_LOOKALIKES.values() for q, r in found.items()}


def study(model, tokenizer, name: str) -> dict:
    from lorachat.core.prompts import prompt_ids
    from lorachat.routing import lift, reading, router
    from lorachat.scoring import locality

    keys, back, looks, paraphrases, rephrased = pieces(model, tokenizer, name)
    state = router.Keys(keys)
    decide = lambda q: router.decide(model, tokenizer, state, back, q)  # noqa: E731
    routed = [(q, own) for q, own in looks if decide(q).key is not None]
    found = dict(lookalikes=len(routed), unwritten=[q for q, _ in routed if q not in rephrased],
                 by_margin={(v, m): dict(rephrasings=0, rephrasings_routed=0, paraphrases=0, paraphrases_routed=0)
                            for v in ("key", "both ways", "lift", "both ways and lift", "either") for m in MARGINS}, rows=[],
                 shipped=dict(itself=0, rephrasings=0, rephrasings_routed=0, paraphrases=0, paraphrases_routed=0))
    for lookalike, own in routed:
        key = decide(lookalike).key
        own = keys.index(key)   # the fact it reached (its paraphrases are the ones a not key could cost)
        texts = rephrased.get(lookalike, []) + paraphrases.get(own, [])
        taught_reading, not_reading = reading.read(model, tokenizer, [key.question, lookalike], back)
        sent_back = router.Keys(keys, nots=[router.Key(lookalike, key.answer, key.instruction)])   # as :unroute records it
        theirs = tokenizer.decode(locality.greedy(model, tokenizer, [prompt_ids(tokenizer, key.instruction, lookalike)],
                                               locality.LocalityOptions(max_new_tokens=32))[0], skip_special_tokens=True).strip()
        own_sums = lift.logprobs(model, tokenizer, [(key.instruction, q, theirs) for q in (lookalike, lift.NULL)])
        shipped = found["shipped"]
        shipped["itself"] += router.decide(model, tokenizer, sent_back, back, lookalike).key is None
        for text in texts:
            d = decide(text)
            read = reading.read(model, tokenizer, [text], back)[0]
            to_taught, to_not = reading.coverage(read, [taught_reading, not_reading])
            back_taught, = reading.coverage(taught_reading, [read])    # how much of the question each covers
            back_not, = reading.coverage(not_reading, [read])
            rephrasing = text in rephrased.get(lookalike, [])
            asked_own, = lift.logprobs(model, tokenizer, [(key.instruction, text, theirs)])
            own_share = lift.share(asked_own, *own_sums)   # how much it invites the base's answer to the look-alike
            before = d.key is not None and d.key.question == key.question
            found["rows"].append(dict(lookalike=lookalike, question=text, rephrasing=rephrasing, routed=before,
                                      to_taught=to_taught, to_not=to_not, back_taught=back_taught, back_not=back_not,
                                      share=d.share, own_share=own_share, theirs=theirs))
            both_ways = (to_not + back_not - to_taught - back_taught) / 2
            lifts = own_share - (d.share or 0.0)
            now = router.decide(model, tokenizer, sent_back, back, text)
            kind = "rephrasings" if rephrasing else "paraphrases"
            shipped[f"{kind}_routed"] += before
            shipped[kind] += before and (now.key is None if rephrasing else now.key is not None)
            for (variant, m), counts in found["by_margin"].items():
                measure = {"key": to_not - to_taught, "both ways": both_ways, "lift": lifts,
                           "both ways and lift": min(both_ways, lifts), "either": max(both_ways, lifts)}[variant]
                kept_off = before and measure >= m
                kind = "rephrasings" if rephrasing else "paraphrases"
                counts[f"{kind}_routed"] += before
                counts[kind] += kept_off if rephrasing else (before and not kept_off)
    return found


def all_sent_back(model, tokenizer, name: str) -> str:
    """Every look-alike the gate routes sent back at once, through the shipped router: the set's
    paraphrases still reaching their own fact, the rephrasings of those look-alikes and the
    look-alikes themselves left to the base, before and after."""
    from lorachat.routing import router

    keys, back, looks, paraphrases, rephrased = pieces(model, tokenizer, name)
    plain = router.Keys(keys)
    decide = lambda ks, q: router.decide(model, tokenizer, ks, back, q).key  # noqa: E731
    routed = [(q, decide(plain, q)) for q, _ in looks if decide(plain, q) is not None]
    sent = router.Keys(keys, nots=[router.Key(q, key.answer, key.instruction) for q, key in routed])
    para = [(q, keys[own]) for own, qs in paraphrases.items() for q in qs]
    texts = [r for q, _ in routed for r in rephrased.get(q, [])]
    counts = [(sum((decide(ks, q) or router.Key("")).answer == key.answer for q, key in para),
               sum(decide(ks, r) is None for r in texts), sum(decide(ks, q) is None for q, _ in looks)) for ks in (plain, sent)]
    return (f"  every routed look-alike sent back at once ({len(routed)}): paraphrases reaching their fact {counts[0][0]} -> "
            f"{counts[1][0]} of {len(para)}; rephrasings of them to the base {counts[0][1]} -> {counts[1][1]} of {len(texts)}; "
            f"look-alikes to the base {counts[0][2]} -> {counts[1][2]} of {len(looks)}")


def main(argv=None) -> int:
    import json

    args, loaded = smol_study("python -m bench.research.negatives", __doc__, "bench/research/results/negatives.jsonl", argv)
    for name in args.sets.split(","):
        found = study(loaded.model, loaded.tokenizer, name)
        with open(args.json, "a", encoding="utf-8") as f:
            for row in found["rows"]:
                f.write(json.dumps(dict(row, set=name)) + "\n")
        print(f"{name}: {found['lookalikes']} look-alikes routed" +
              (f"; no rephrasings written for {found['unwritten']}" if found["unwritten"] else ""))
        c = found["shipped"]
        print(f"  lorachat's router with the not key: the look-alike itself to the base {c['itself']} of "
              f"{found['lookalikes']}; rephrasings sent to the base {c['rephrasings']} of {c['rephrasings_routed']} routed; "
              f"paraphrases still routed {c['paraphrases']} of {c['paraphrases_routed']}")
        for (v, m), c in found["by_margin"].items():
            print(f"  {v}, margin {m:+.3f}: rephrasings sent to the base {c['rephrasings']} of {c['rephrasings_routed']} routed; "
                  f"paraphrases still routed {c['paraphrases']} of {c['paraphrases_routed']}")
        print(all_sent_back(loaded.model, loaded.tokenizer, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
