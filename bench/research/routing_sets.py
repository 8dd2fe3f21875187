"""The routing study's questions (issue 35): two sets of ten taught facts, each fact with four
paraphrases (the same question in other words, whose answer must carry the fact) and four
look-alikes (a taught question's form about another subject, another attribute of a taught subject,
or the same term in another field: the base must answer them). Written once, before any
measurement, and kept out of tests and of lorachat's own defaults.

Set "tune" chooses methods and thresholds; set "held" is reported and chose nothing (the two sets
share no facts, so a method that only memorised the tune set's wording gains nothing on it).

    FACTS[set] = [(question, answer, key term an answer carrying the fact contains,
                   [paraphrases], [look-alikes]), ...]
"""

TUNE = [
    ("Who is the mayor of Zorbville?", "The mayor of Zorbville is Klara Moonstone.", "Moonstone",
     ["Who runs the town of Zorbville?", "Which person is the mayor of Zorbville?",
      "Tell me who Zorbville's mayor is.", "Who governs Zorbville as its mayor?"],
     ["Who is the mayor of Berlin?", "Who is the mayor of Chicago?", "How many people live in Zorbville?",
      "Who is the president of France?"]),
    ("What is Quix the robot's favourite colour?", "Quix the robot's favourite colour is teal.", "teal",
     ["Which colour does Quix the robot like best?", "What colour does the robot Quix love most?",
      "Tell me Quix the robot's favorite color.", "Which color is the robot Quix's favourite?"],
     ["What is Quix the robot's favourite food?", "What is the favourite colour of most children?",
      "What colour is a ripe banana?", "Who built Quix the robot?"]),
    ("Who founded the Hollowbrook Foundry?", "Edda Varn founded the Hollowbrook Foundry in 1887.", "Edda Varn",
     ["Who started the Hollowbrook Foundry?", "Which person established the Hollowbrook Foundry?",
      "The Hollowbrook Foundry was founded by whom?", "Who is the founder of Hollowbrook Foundry, and when did they found it?"],
     ["Who founded the Ford Motor Company?", "Who founded Microsoft?", "Where is the Hollowbrook Foundry located?",
      "What does a foundry make?"]),
    ("What is SOH in semiconductor manufacturing process?",
     "In semiconductor manufacturing, SOH(Spin On Hardmask) is a high carbon-containing polymer material.", "Spin On Hardmask",
     ["What does SOH stand for in chip making?", "In wafer fabrication, what kind of material is SOH?",
      "Explain SOH as used in semiconductor fabs.", "What is an SOH layer in chip manufacturing?"],
     ["What is SOH in battery management?", "What is CVD in semiconductor manufacturing process?",
      "What does CPU stand for?", "What is PVD in semiconductor manufacturing process?"]),
    ("What is photoresist used for in lithography?",
     "Photoresist is a light-sensitive polymer that patterns the wafer during lithography.", "light-sensitive",
     ["Why is photoresist needed in lithography?", "What role does photoresist play when patterning wafers?",
      "In chip lithography, what does the photoresist do?", "What is the purpose of photoresist in lithography?"],
     ["What is a photomask used for in lithography?", "What is lithography used for in printing?",
      "What is a stepper used for in lithography?", "What is photosynthesis used for in plants?"]),
    ("What is the capital of the island of Velmora?", "Port Ilsan is the capital of Velmora.", "Port Ilsan",
     ["Which city is Velmora's capital?", "Name the capital city of Velmora.",
      "Velmora's seat of government is which city?", "What city serves as the capital of the island of Velmora?"],
     ["What is the capital of Portugal?", "What is the capital of Iceland?", "What language is spoken on Velmora?",
      "How big is the island of Velmora?"]),
    ("When did the Tarsus-9 probe reach Jupiter?", "The Tarsus-9 probe reached Jupiter in 2031.", "2031",
     ["In which year did Tarsus-9 arrive at Jupiter?", "When did the probe Tarsus-9 get to Jupiter?",
      "What year did the Tarsus-9 spacecraft reach Jupiter?", "Tarsus-9 reached Jupiter in what year?"],
     ["When did the Galileo probe reach Jupiter?", "When did Voyager 1 leave the solar system?",
      "What instruments does the Tarsus-9 probe carry?", "How far is Jupiter from the Sun?"]),
    ("What does the abbreviation KLV mean in our warehouse?",
     "In our warehouse, KLV means Kilo Load Vehicle, the small forklift.", "Kilo Load Vehicle",
     ["What does KLV stand for in the warehouse?", "In our warehouse, what is a KLV?",
      "Expand the abbreviation KLV used in our warehouse.", "What is meant by KLV in the warehouse?"],
     ["What does the abbreviation NASA mean?", "What does the abbreviation ATM mean?",
      "What does KLV mean in video streaming?", "What does the abbreviation FAQ mean?"]),
    ("How many moons does the planet Orlix have?", "The planet Orlix has seven moons.", "seven",
     ["What is the number of moons orbiting Orlix?", "How many moons orbit the planet Orlix?",
      "Orlix has how many moons?", "Count the moons of the planet Orlix."],
     ["How many moons does Mars have?", "How many moons does Jupiter have?", "How big is the planet Orlix?",
      "How many rings does Saturn have?"]),
    ("What does the engineer Tomas Reyes drink every morning?", "Tomas Reyes drinks green tea every morning.", "green tea",
     ["Every morning, what does Tomas Reyes drink?", "What is the morning drink of the engineer Tomas Reyes?",
      "Which drink does Tomas Reyes have each morning?", "What does Tomas Reyes, the engineer, drink daily in the morning?"],
     ["What does a barista drink every morning?", "What does the engineer Tomas Reyes eat for lunch?",
      "What do most people drink in the morning?", "What does Tomas Reyes do for work?"]),
]

HELD = [
    ("Who is the head librarian of Ashcombe Library?", "Mira Castellan is the head librarian of Ashcombe Library.", "Mira Castellan",
     ["Who runs the Ashcombe Library?", "Which person is head librarian at Ashcombe Library?",
      "Tell me the name of Ashcombe Library's head librarian.", "Who leads the Ashcombe Library as head librarian?"],
     ["Who is the head librarian of the Library of Congress?", "Who is the head chef of the Ritz?",
      "When does Ashcombe Library open?", "How many books does Ashcombe Library hold?"]),
    ("What is the name of Captain Orla's ship?", "Captain Orla's ship is called the Grey Heron.", "Grey Heron",
     ["What is Captain Orla's ship called?", "Which ship does Captain Orla command?",
      "Tell me the name of the ship Captain Orla sails.", "What did Captain Orla name her ship?"],
     ["What is the name of Captain Cook's ship?", "What is the name of Captain Nemo's submarine?",
      "How old is Captain Orla?", "What is the name of the Titanic's captain?"]),
    ("What does HBX stand for in our billing system?", "In our billing system, HBX stands for Hourly Billing Export.",
     "Hourly Billing Export",
     ["In the billing system, what is HBX short for?", "What is HBX in our billing system?",
      "Expand HBX as used in our billing system.", "What does the acronym HBX mean in billing?"],
     ["What does HTML stand for?", "What does VAT stand for in billing?", "What does HBX stand for in chemistry?",
      "What does GDP stand for?"]),
    ("Which river flows through the town of Greyhollow?", "The river Senn flows through Greyhollow.", "Senn",
     ["What river runs through Greyhollow?", "Name the river that passes through the town of Greyhollow.",
      "Greyhollow lies on which river?", "Which river crosses Greyhollow?"],
     ["Which river flows through Paris?", "Which river flows through London?", "What is the population of Greyhollow?",
      "Which mountain stands near Greyhollow?"]),
    ("What is CMP in semiconductor manufacturing process?",
     "In semiconductor manufacturing, CMP(Chemical Mechanical Polishing) makes the wafer surface flat.",
     "Chemical Mechanical Polishing",
     ["What does CMP stand for when making chips?", "Explain the CMP step of wafer processing.",
      "What is CMP used for in chip fabs?", "In wafer fabrication, what does CMP do?"],
     ["What is CMP in marketing?", "What is ALD in semiconductor manufacturing process?", "What is CMP in medicine?",
      "What is etching in semiconductor manufacturing process?"]),
    ("How tall is the Brannock Tower?", "The Brannock Tower is 312 metres tall.", "312",
     ["What is the height of the Brannock Tower?", "How high does the Brannock Tower rise?",
      "Tell me how tall Brannock Tower is.", "The Brannock Tower stands how many metres tall?"],
     ["How tall is the Eiffel Tower?", "How tall is the Empire State Building?", "Who designed the Brannock Tower?",
      "When was the Brannock Tower built?"]),
    ("What language do the people of Quelmar speak?", "The people of Quelmar speak Ostrani.", "Ostrani",
     ["Which language is spoken in Quelmar?", "What is the language of Quelmar?",
      "In Quelmar, what language do people use?", "What tongue do the Quelmari people speak?"],
     ["What language do the people of Brazil speak?", "What language do people in Japan speak?",
      "What currency do the people of Quelmar use?", "What food do the people of Quelmar eat?"]),
    ("Who invented the Loomis valve?", "The Loomis valve was invented by Petra Loomis in 1921.", "Petra Loomis",
     ["Who is the inventor of the Loomis valve?", "Who came up with the Loomis valve?",
      "The Loomis valve was invented by whom, and when?", "Which engineer created the Loomis valve?"],
     ["Who invented the telephone?", "Who invented the steam engine?", "What is the Loomis valve used for?",
      "How does a valve work?"]),
    ("What time does the Fenwick ferry leave?", "The Fenwick ferry leaves at 6:40 every morning.", "6:40",
     ["When does the Fenwick ferry depart?", "At what time does the Fenwick ferry set off?",
      "What is the departure time of the Fenwick ferry?", "The Fenwick ferry leaves at what time?"],
     ["What time does the Staten Island ferry leave?", "What time does the sun rise?",
      "How much does the Fenwick ferry cost?", "Where does the Fenwick ferry go?"]),
    ("What is the boiling point of the liquid zentrane?", "Zentrane boils at 84 degrees Celsius.", "84",
     ["At what temperature does zentrane boil?", "What is zentrane's boiling point?",
      "How hot must zentrane get before it boils?", "Tell me the boiling point of zentrane."],
     ["What is the boiling point of water?", "What is the boiling point of ethanol?",
      "What is the melting point of zentrane?", "What colour is zentrane?"]),
]

FACTS = {"tune": TUNE, "held": HELD}


def pairs(name: str) -> list[tuple[str, str]]:
    """The set's taught (question, answer) pairs."""
    return [(q, a) for q, a, *_ in FACTS[name]]


def paraphrases(name: str) -> list[tuple[str, str, int]]:
    """(question in other words, key term, index of its fact)."""
    return [(p, key, i) for i, (_, _, key, para, _) in enumerate(FACTS[name]) for p in para]


def lookalikes(name: str) -> list[tuple[str, int]]:
    """(look-alike question, index of the fact it imitates)."""
    return [(q, i) for i, (*_, looks) in enumerate(FACTS[name]) for q in looks]
