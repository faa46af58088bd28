"""The 847 ADE20K-Full classes: (ADE20K object id, name), in train-id order.

Generated once (a throwaway script, not kept) from the table
ADE20K_SEM_SEG_FULL_CATEGORIES of facebookresearch/Mask2Former
mask2former/data/datasets/register_ade20k_full.py (commit 9b0651c), which is
entry for entry the table of facebookresearch/MaskFormer
datasets/prepare_ade20k_full_sem_seg.py (commit da3e60d). Entry i is train id
i; its id is the ADE20K 2021 object class index that a pixel of a
`<name>_seg.png` decodes to (R // 10 * 256 + G), the `name_ndx` of the
release's per-image json files. Data only: the facts, no code.
"""

# fmt: off
CLASSES = (
    (2978, 'wall'),  # 0
    (312, 'building, edifice'),  # 1
    (2420, 'sky'),  # 2
    (2855, 'tree'),  # 3
    (2131, 'road, route'),  # 4
    (976, 'floor, flooring'),  # 5
    (447, 'ceiling'),  # 6
    (165, 'bed'),  # 7
    (2377, 'sidewalk, pavement'),  # 8
    (838, 'earth, ground'),  # 9
    (350, 'cabinet'),  # 10
    (1831, 'person, individual, someone, somebody, mortal, soul'),  # 11
    (1125, 'grass'),  # 12
    (3055, 'windowpane, window'),  # 13
    (401, 'car, auto, automobile, machine, motorcar'),  # 14
    (1610, 'mountain, mount'),  # 15
    (1910, 'plant, flora, plant life'),  # 16
    (2684, 'table'),  # 17
    (471, 'chair'),  # 18
    (687, 'curtain, drape, drapery, mantle, pall'),  # 19
    (774, 'door'),  # 20
    (2473, 'sofa, couch, lounge'),  # 21
    (2264, 'sea'),  # 22
    (1735, 'painting, picture'),  # 23
    (2994, 'water'),  # 24
    (1564, 'mirror'),  # 25
    (1276, 'house'),  # 26
    (2178, 'rug, carpet, carpeting'),  # 27
    (2329, 'shelf'),  # 28
    (57, 'armchair'),  # 29
    (907, 'fence, fencing'),  # 30
    (913, 'field'),  # 31
    (1395, 'lamp'),  # 32
    (2138, 'rock, stone'),  # 33
    (2272, 'seat'),  # 34
    (2128, 'river'),  # 35
    (724, 'desk'),  # 36
    (155, 'bathtub, bathing tub, bath, tub'),  # 37
    (2053, 'railing, rail'),  # 38
    (2380, 'signboard, sign'),  # 39
    (689, 'cushion'),  # 40
    (1788, 'path'),  # 41
    (3087, 'work surface'),  # 42
    (2530, 'stairs, steps'),  # 43
    (581, 'column, pillar'),  # 44
    (2388, 'sink'),  # 45
    (2985, 'wardrobe, closet, press'),  # 46
    (2454, 'snow'),  # 47
    (2096, 'refrigerator, icebox'),  # 48
    (137, 'base, pedestal, stand'),  # 49
    (294, 'bridge, span'),  # 50
    (212, 'blind, screen'),  # 51
    (2185, 'runway'),  # 52
    (524, 'cliff, drop, drop-off'),  # 53
    (2212, 'sand'),  # 54
    (943, 'fireplace, hearth, open fireplace'),  # 55
    (1869, 'pillow'),  # 56
    (2251, 'screen door, screen'),  # 57
    (2793, 'toilet, can, commode, crapper, pot, potty, stool, throne'),  # 58
    (2423, 'skyscraper'),  # 59
    (1121, 'grandstand, covered stand'),  # 60
    (266, 'box'),  # 61
    (1948, 'pool table, billiard table, snooker table'),  # 62
    (1744, 'palm, palm tree'),  # 63
    (783, 'double door'),  # 64
    (571, 'coffee table, cocktail table'),  # 65
    (627, 'counter'),  # 66
    (629, 'countertop'),  # 67
    (491, 'chest of drawers, chest, bureau, dresser'),  # 68
    (1374, 'kitchen island'),  # 69
    (223, 'boat'),  # 70
    (3016, 'waterfall, falls'),  # 71
    (2598, 'stove, kitchen stove, range, kitchen range, cooking stove'),  # 72
    (978, 'flower'),  # 73
    (239, 'bookcase'),  # 74
    (608, 'controls'),  # 75
    (236, 'book'),  # 76
    (2531, 'stairway, staircase'),  # 77
    (2616, 'streetlight, street lamp'),  # 78
    (591, 'computer, computing machine, computing device, data processor, electronic computer, information processing system'),  # 79
    (327, 'bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle'),  # 80
    (2679, 'swivel chair'),  # 81
    (1451, 'light, light source'),  # 82
    (181, 'bench'),  # 83
    (420, 'case, display case, showcase, vitrine'),  # 84
    (2821, 'towel'),  # 85
    (1023, 'fountain'),  # 86
    (855, 'embankment'),  # 87
    (2733, 'television receiver, television, television set, tv, tv set, idiot box, boob tube, telly, goggle box'),  # 88
    (2928, 'van'),  # 89
    (1240, 'hill'),  # 90
    (77, 'awning, sunshade, sunblind'),  # 91
    (1969, 'poster, posting, placard, notice, bill, card'),  # 92
    (2880, 'truck, motortruck'),  # 93
    (14, 'airplane, aeroplane, plane'),  # 94
    (1936, 'pole'),  # 95
    (2828, 'tower'),  # 96
    (631, 'court'),  # 97
    (103, 'ball'),  # 98
    (3144, 'aircraft carrier, carrier, flattop, attack aircraft carrier'),  # 99
    (308, 'buffet, counter, sideboard'),  # 100
    (1282, 'hovel, hut, hutch, shack, shanty'),  # 101
    (38, 'apparel, wearing apparel, dress, clothes'),  # 102
    (1563, 'minibike, motorbike'),  # 103
    (29, 'animal, animate being, beast, brute, creature, fauna'),  # 104
    (480, 'chandelier, pendant, pendent'),  # 105
    (2569, 'step, stair'),  # 106
    (247, 'booth, cubicle, stall, kiosk'),  # 107
    (187, 'bicycle, bike, wheel, cycle'),  # 108
    (778, 'doorframe, doorcase'),  # 109
    (2243, 'sconce'),  # 110
    (1941, 'pond'),  # 111
    (2833, 'trade name, brand name, brand, marque'),  # 112
    (120, 'bannister, banister, balustrade, balusters, handrail'),  # 113
    (95, 'bag'),  # 114
    (2836, 'traffic light, traffic signal, stoplight'),  # 115
    (1087, 'gazebo'),  # 116
    (868, 'escalator, moving staircase, moving stairway'),  # 117
    (1401, 'land, ground, soil'),  # 118
    (220, 'board, plank'),  # 119
    (47, 'arcade machine'),  # 120
    (843, 'eiderdown, duvet, continental quilt'),  # 121
    (123, 'bar'),  # 122
    (2537, 'stall, stand, sales booth'),  # 123
    (1927, 'playground'),  # 124
    (2337, 'ship'),  # 125
    (1702, 'ottoman, pouf, pouffe, puff, hassock'),  # 126
    (64, 'ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin'),  # 127
    (249, 'bottle'),  # 128
    (642, 'cradle'),  # 129
    (1981, 'pot, flowerpot'),  # 130
    (609, 'conveyer belt, conveyor belt, conveyer, conveyor, transporter'),  # 131
    (2840, 'train, railroad train'),  # 132
    (2586, 'stool'),  # 133
    (1393, 'lake'),  # 134
    (2704, 'tank, storage tank'),  # 135
    (1304, 'ice, water ice'),  # 136
    (146, 'basket, handbasket'),  # 137
    (1494, 'manhole'),  # 138
    (2739, 'tent, collapsible shelter'),  # 139
    (389, 'canopy'),  # 140
    (1551, 'microwave, microwave oven'),  # 141
    (131, 'barrel, cask'),  # 142
    (738, 'dirt track'),  # 143
    (161, 'beam'),  # 144
    (747, 'dishwasher, dish washer, dishwashing machine'),  # 145
    (1919, 'plate'),  # 146
    (3109, 'screen, crt screen'),  # 147
    (2179, 'ruins'),  # 148
    (2989, 'washer, automatic washer, washing machine'),  # 149
    (206, 'blanket, cover'),  # 150
    (1930, 'plaything, toy'),  # 151
    (1002, 'food, solid food'),  # 152
    (2254, 'screen, silver screen, projection screen'),  # 153
    (1708, 'oven'),  # 154
    (2526, 'stage'),  # 155
    (160, 'beacon, lighthouse, beacon light, pharos'),  # 156
    (2901, 'umbrella'),  # 157
    (2262, 'sculpture'),  # 158
    (44, 'aqueduct'),  # 159
    (597, 'container'),  # 160
    (2235, 'scaffolding, staging'),  # 161
    (1260, 'hood, exhaust hood'),  # 162
    (682, 'curb, curbing, kerb'),  # 163
    (2151, 'roller coaster'),  # 164
    (3107, 'horse, equus caballus'),  # 165
    (432, 'catwalk'),  # 166
    (1098, 'glass, drinking glass'),  # 167
    (2932, 'vase'),  # 168
    (461, 'central reservation'),  # 169
    (410, 'carousel'),  # 170
    (2046, 'radiator'),  # 171
    (533, 'closet'),  # 172
    (1481, 'machine'),  # 173
    (1858, 'pier, wharf, wharfage, dock'),  # 174
    (894, 'fan'),  # 175
    (1322, 'inflatable bounce game'),  # 176
    (1891, 'pitch'),  # 177
    (1756, 'paper'),  # 178
    (49, 'arcade, colonnade'),  # 179
    (1272, 'hot tub'),  # 180
    (1229, 'helicopter'),  # 181
    (2850, 'tray'),  # 182
    (1784, 'partition, divider'),  # 183
    (2962, 'vineyard'),  # 184
    (259, 'bowl'),  # 185
    (319, 'bullring'),  # 186
    (954, 'flag'),  # 187
    (1974, 'pot'),  # 188
    (1013, 'footbridge, overcrossing, pedestrian bridge'),  # 189
    (2356, 'shower'),  # 190
    (97, 'bag, traveling bag, travelling bag, grip, suitcase'),  # 191
    (318, 'bulletin board, notice board'),  # 192
    (592, 'confessional booth'),  # 193
    (2885, 'trunk, tree trunk, bole'),  # 194
    (1017, 'forest'),  # 195
    (851, 'elevator door'),  # 196
    (1407, 'laptop, laptop computer'),  # 197
    (1332, 'instrument panel'),  # 198
    (303, 'bucket, pail'),  # 199
    (2714, 'tapestry, tapis'),  # 200
    (1924, 'platform'),  # 201
    (1346, 'jacket'),  # 202
    (1081, 'gate'),  # 203
    (1583, 'monitor, monitoring device'),  # 204
    (2727, 'telephone booth, phone booth, call box, telephone box, telephone kiosk'),  # 205
    (2509, 'spotlight, spot'),  # 206
    (2123, 'ring'),  # 207
    (602, 'control panel'),  # 208
    (202, 'blackboard, chalkboard'),  # 209
    (10, 'air conditioner, air conditioning'),  # 210
    (490, 'chest'),  # 211
    (530, 'clock'),  # 212
    (2213, 'sand dune'),  # 213
    (1884, 'pipe, pipage, piping'),  # 214
    (2934, 'vault'),  # 215
    (2687, 'table football'),  # 216
    (387, 'cannon'),  # 217
    (2668, 'swimming pool, swimming bath, natatorium'),  # 218
    (982, 'fluorescent, fluorescent fixture'),  # 219
    (2547, 'statue'),  # 220
    (1474, 'loudspeaker, speaker, speaker unit, loudspeaker system, speaker system'),  # 221
    (877, 'exhibitor'),  # 222
    (1391, 'ladder'),  # 223
    (414, 'carport'),  # 224
    (698, 'dam'),  # 225
    (2019, 'pulpit'),  # 226
    (2422, 'skylight, fanlight'),  # 227
    (3010, 'water tower'),  # 228
    (1139, 'grill, grille, grillwork'),  # 229
    (753, 'display board'),  # 230
    (1747, 'pane, pane of glass, window glass'),  # 231
    (2175, 'rubbish, trash, scrap'),  # 232
    (1301, 'ice rink'),  # 233
    (1033, 'fruit'),  # 234
    (1789, 'patio'),  # 235
    (2939, 'vending machine'),  # 236
    (2730, 'telephone, phone, telephone set'),  # 237
    (1652, 'net'),  # 238
    (90, 'backpack, back pack, knapsack, packsack, rucksack, haversack'),  # 239
    (1349, 'jar'),  # 240
    (2830, 'track'),  # 241
    (1485, 'magazine'),  # 242
    (2370, 'shutter'),  # 243
    (2155, 'roof'),  # 244
    (118, 'banner, streamer'),  # 245
    (1402, 'landfill'),  # 246
    (1957, 'post'),  # 247
    (3130, 'altarpiece, reredos'),  # 248
    (1197, 'hat, chapeau, lid'),  # 249
    (52, 'arch, archway'),  # 250
    (2688, 'table game'),  # 251
    (96, 'bag, handbag, pocketbook, purse'),  # 252
    (762, 'document, written document, papers'),  # 253
    (772, 'dome'),  # 254
    (1857, 'pier'),  # 255
    (2315, 'shanties'),  # 256
    (1016, 'forecourt'),  # 257
    (643, 'crane'),  # 258
    (3105, 'dog, domestic dog, canis familiaris'),  # 259
    (1849, 'piano, pianoforte, forte-piano'),  # 260
    (791, 'drawing'),  # 261
    (349, 'cabin'),  # 262
    (6, 'ad, advertisement, advertizement, advertising, advertizing, advert'),  # 263
    (3114, 'amphitheater, amphitheatre, coliseum'),  # 264
    (1587, 'monument'),  # 265
    (1233, 'henhouse'),  # 266
    (559, 'cockpit'),  # 267
    (1223, 'heater, warmer'),  # 268
    (3049, 'windmill, aerogenerator, wind generator'),  # 269
    (1943, 'pool'),  # 270
    (853, 'elevator, lift'),  # 271
    (709, 'decoration, ornament, ornamentation'),  # 272
    (1390, 'labyrinth'),  # 273
    (2748, 'text, textual matter'),  # 274
    (2007, 'printer'),  # 275
    (1546, 'mezzanine, first balcony'),  # 276
    (1513, 'mattress'),  # 277
    (2600, 'straw'),  # 278
    (2538, 'stalls'),  # 279
    (1790, 'patio, terrace'),  # 280
    (194, 'billboard, hoarding'),  # 281
    (326, 'bus stop'),  # 282
    (2877, 'trouser, pant'),  # 283
    (594, 'console table, console'),  # 284
    (2036, 'rack'),  # 285
    (1662, 'notebook'),  # 286
    (2366, 'shrine'),  # 287
    (1754, 'pantry'),  # 288
    (418, 'cart'),  # 289
    (2553, 'steam shovel'),  # 290
    (1951, 'porch'),  # 291
    (1963, 'postbox, mailbox, letter box'),  # 292
    (918, 'figurine, statuette'),  # 293
    (2086, 'recycling bin'),  # 294
    (997, 'folding screen'),  # 295
    (2731, 'telescope'),  # 296
    (704, 'deck chair, beach chair'),  # 297
    (1365, 'kennel'),  # 298
    (569, 'coffee maker'),  # 299
    (3108, "altar, communion table, lord's table"),  # 300
    (948, 'fish'),  # 301
    (839, 'easel'),  # 302
    (63, 'artificial golf green'),  # 303
    (1305, 'iceberg'),  # 304
    (378, 'candlestick, candle holder'),  # 305
    (2362, 'shower stall, shower bath'),  # 306
    (2734, 'television stand'),  # 307
    (2982, 'wall socket, wall plug, electric outlet, electrical outlet, outlet, electric receptacle'),  # 308
    (2398, 'skeleton'),  # 309
    (1119, 'grand piano, grand'),  # 310
    (382, 'candy, confect'),  # 311
    (1141, 'grille door'),  # 312
    (1805, 'pedestal, plinth, footstall'),  # 313
    (3102, 'jersey, t-shirt, tee shirt'),  # 314
    (2341, 'shoe'),  # 315
    (1131, 'gravestone, headstone, tombstone'),  # 316
    (2316, 'shanty'),  # 317
    (2626, 'structure'),  # 318
    (3104, 'rocking chair, rocker'),  # 319
    (198, 'bird'),  # 320
    (1896, 'place mat'),  # 321
    (2800, 'tomb'),  # 322
    (190, 'big top'),  # 323
    (3131, 'gas pump, gasoline pump, petrol pump, island dispenser'),  # 324
    (1463, 'lockers'),  # 325
    (357, 'cage'),  # 326
    (929, 'finger'),  # 327
    (209, 'bleachers'),  # 328
    (912, 'ferris wheel'),  # 329
    (1164, 'hairdresser chair'),  # 330
    (1509, 'mat'),  # 331
    (2539, 'stands'),  # 332
    (3116, 'aquarium, fish tank, marine museum'),  # 333
    (2615, 'streetcar, tram, tramcar, trolley, trolley car'),  # 334
    (1644, 'napkin, table napkin, serviette'),  # 335
    (818, 'dummy'),  # 336
    (242, 'booklet, brochure, folder, leaflet, pamphlet'),  # 337
    (2217, 'sand trap'),  # 338
    (2347, 'shop, store'),  # 339
    (2686, 'table cloth'),  # 340
    (2300, 'service station'),  # 341
    (572, 'coffin'),  # 342
    (789, 'drawer'),  # 343
    (358, 'cages'),  # 344
    (2443, 'slot machine, coin machine'),  # 345
    (101, 'balcony'),  # 346
    (2969, 'volleyball court'),  # 347
    (2692, 'table tennis'),  # 348
    (606, 'control table'),  # 349
    (2339, 'shirt'),  # 350
    (1533, 'merchandise, ware, product'),  # 351
    (2060, 'railway'),  # 352
    (1782, 'parterre'),  # 353
    (495, 'chimney'),  # 354
    (371, 'can, tin, tin can'),  # 355
    (2707, 'tanks'),  # 356
    (889, 'fabric, cloth, material, textile'),  # 357
    (3156, 'alga, algae'),  # 358
    (2683, 'system'),  # 359
    (1499, 'map'),  # 360
    (1135, 'greenhouse'),  # 361
    (1619, 'mug'),  # 362
    (125, 'barbecue'),  # 363
    (2838, 'trailer'),  # 364
    (2792, 'toilet tissue, toilet paper, bathroom tissue'),  # 365
    (1695, 'organ'),  # 366
    (746, 'dishrag, dishcloth'),  # 367
    (1343, 'island'),  # 368
    (1370, 'keyboard'),  # 369
    (2858, 'trench'),  # 370
    (145, 'basket, basketball hoop, hoop'),  # 371
    (2565, 'steering wheel, wheel'),  # 372
    (1892, 'pitcher, ewer'),  # 373
    (1103, 'goal'),  # 374
    (286, 'bread, breadstuff, staff of life'),  # 375
    (170, 'beds'),  # 376
    (3073, 'wood'),  # 377
    (922, 'file cabinet'),  # 378
    (1655, 'newspaper, paper'),  # 379
    (1602, 'motorboat'),  # 380
    (2160, 'rope'),  # 381
    (1151, 'guitar'),  # 382
    (2176, 'rubble'),  # 383
    (2239, 'scarf'),  # 384
    (132, 'barrels'),  # 385
    (394, 'cap'),  # 386
    (1424, 'leaves'),  # 387
    (607, 'control tower'),  # 388
    (700, 'dashboard'),  # 389
    (116, 'bandstand'),  # 390
    (1425, 'lectern'),  # 391
    (2676, 'switch, electric switch, electrical switch'),  # 392
    (141, 'baseboard, mopboard, skirting board'),  # 393
    (2360, 'shower room'),  # 394
    (2449, 'smoke'),  # 395
    (897, 'faucet, spigot'),  # 396
    (317, 'bulldozer'),  # 397
    (2228, 'saucepan'),  # 398
    (2351, 'shops'),  # 399
    (1543, 'meter'),  # 400
    (656, 'crevasse'),  # 401
    (1088, 'gear'),  # 402
    (373, 'candelabrum, candelabra'),  # 403
    (2472, 'sofa bed'),  # 404
    (2892, 'tunnel'),  # 405
    (1740, 'pallet'),  # 406
    (3067, 'wire, conducting wire'),  # 407
    (1367, 'kettle, boiler'),  # 408
    (188, 'bidet'),  # 409
    (79, 'baby buggy, baby carriage, carriage, perambulator, pram, stroller, go-cart, pushchair, pusher'),  # 410
    (1633, 'music stand'),  # 411
    (1885, 'pipe, tube'),  # 412
    (677, 'cup'),  # 413
    (1779, 'parking meter'),  # 414
    (1297, 'ice hockey rink'),  # 415
    (2334, 'shelter'),  # 416
    (3027, 'weeds'),  # 417
    (2735, 'temple'),  # 418
    (1791, 'patty, cake'),  # 419
    (2405, 'ski slope'),  # 420
    (1748, 'panel'),  # 421
    (2983, 'wallet'),  # 422
    (3035, 'wheel'),  # 423
    (2824, 'towel rack, towel horse'),  # 424
    (2168, 'roundabout'),  # 425
    (385, 'canister, cannister, tin'),  # 426
    (2148, 'rod'),  # 427
    (2465, 'soap dispenser'),  # 428
    (175, 'bell'),  # 429
    (390, 'canvas'),  # 430
    (268, 'box office, ticket office, ticket booth'),  # 431
    (2722, 'teacup'),  # 432
    (2857, 'trellis'),  # 433
    (3088, 'workbench'),  # 434
    (2926, 'valley, vale'),  # 435
    (2782, 'toaster'),  # 436
    (1378, 'knife'),  # 437
    (1934, 'podium'),  # 438
    (2072, 'ramp'),  # 439
    (2889, 'tumble dryer'),  # 440
    (944, 'fireplug, fire hydrant, plug'),  # 441
    (1158, 'gym shoe, sneaker, tennis shoe'),  # 442
    (1383, 'lab bench'),  # 443
    (867, 'equipment'),  # 444
    (2145, 'rocky formation'),  # 445
    (1915, 'plastic'),  # 446
    (361, 'calendar'),  # 447
    (402, 'caravan'),  # 448
    (482, 'check-in-desk'),  # 449
    (2761, 'ticket counter'),  # 450
    (300, 'brush'),  # 451
    (1554, 'mill'),  # 452
    (636, 'covered bridge'),  # 453
    (260, 'bowling alley'),  # 454
    (1186, 'hanger'),  # 455
    (871, 'excavator'),  # 456
    (2859, 'trestle'),  # 457
    (2103, 'revolving door'),  # 458
    (208, 'blast furnace'),  # 459
    (2236, 'scale, weighing machine'),  # 460
    (2012, 'projector'),  # 461
    (2462, 'soap'),  # 462
    (1462, 'locker'),  # 463
    (2832, 'tractor'),  # 464
    (2617, 'stretcher'),  # 465
    (1024, 'frame'),  # 466
    (1129, 'grating'),  # 467
    (18, 'alembic'),  # 468
    (376, 'candle, taper, wax light'),  # 469
    (134, 'barrier'),  # 470
    (407, 'cardboard'),  # 471
    (434, 'cave'),  # 472
    (2017, 'puddle'),  # 473
    (2717, 'tarp'),  # 474
    (2005, 'price tag'),  # 475
    (2993, 'watchtower'),  # 476
    (1545, 'meters'),  # 477
    (1445, 'light bulb, lightbulb, bulb, incandescent lamp, electric light, electric-light bulb'),  # 478
    (2831, 'tracks'),  # 479
    (1161, 'hair dryer'),  # 480
    (2411, 'skirt'),  # 481
    (2949, 'viaduct'),  # 482
    (1769, 'paper towel'),  # 483
    (552, 'coat'),  # 484
    (2327, 'sheet'),  # 485
    (939, 'fire extinguisher, extinguisher, asphyxiator'),  # 486
    (3013, 'water wheel'),  # 487
    (1986, 'pottery, clayware'),  # 488
    (1486, 'magazine rack'),  # 489
    (2723, 'teapot'),  # 490
    (1549, 'microphone, mike'),  # 491
    (2649, 'support'),  # 492
    (1020, 'forklift'),  # 493
    (392, 'canyon'),  # 494
    (422, 'cash register, register'),  # 495
    (1419, 'leaf, leafage, foliage'),  # 496
    (2099, 'remote control, remote'),  # 497
    (2464, 'soap dish'),  # 498
    (3058, 'windshield, windscreen'),  # 499
    (430, 'cat'),  # 500
    (675, 'cue, cue stick, pool cue, pool stick'),  # 501
    (2941, 'vent, venthole, vent-hole, blowhole'),  # 502
    (2955, 'videos'),  # 503
    (2355, 'shovel'),  # 504
    (840, 'eaves'),  # 505
    (32, 'antenna, aerial, transmitting aerial'),  # 506
    (2338, 'shipyard'),  # 507
    (1232, 'hen, biddy'),  # 508
    (2834, 'traffic cone'),  # 509
    (2991, 'washing machines'),  # 510
    (2879, 'truck crane'),  # 511
    (444, 'cds'),  # 512
    (1657, 'niche'),  # 513
    (2246, 'scoreboard'),  # 514
    (296, 'briefcase'),  # 515
    (245, 'boot'),  # 516
    (2661, 'sweater, jumper'),  # 517
    (1202, 'hay'),  # 518
    (1714, 'pack'),  # 519
    (251, 'bottle rack'),  # 520
    (1095, 'glacier'),  # 521
    (1828, 'pergola'),  # 522
    (311, 'building materials'),  # 523
    (2732, 'television camera'),  # 524
    (947, 'first floor'),  # 525
    (2115, 'rifle'),  # 526
    (2738, 'tennis table'),  # 527
    (2525, 'stadium'),  # 528
    (2194, 'safety belt'),  # 529
    (634, 'cover'),  # 530
    (740, 'dish rack'),  # 531
    (2682, 'synthesizer'),  # 532
    (2020, 'pumpkin'),  # 533
    (1156, 'gutter'),  # 534
    (1036, 'fruit stand'),  # 535
    (1295, 'ice floe, floe'),  # 536
    (1181, 'handle, grip, handgrip, hold'),  # 537
    (3037, 'wheelchair'),  # 538
    (1614, 'mousepad, mouse mat'),  # 539
    (736, 'diploma'),  # 540
    (893, 'fairground ride'),  # 541
    (2047, 'radio'),  # 542
    (1274, 'hotplate'),  # 543
    (1361, 'junk'),  # 544
    (3036, 'wheelbarrow'),  # 545
    (2606, 'stream'),  # 546
    (2797, 'toll plaza'),  # 547
    (2022, 'punching bag'),  # 548
    (2876, 'trough'),  # 549
    (2758, 'throne'),  # 550
    (472, 'chair desk'),  # 551
    (3028, 'weighbridge'),  # 552
    (882, 'extractor fan'),  # 553
    (1189, 'hanging clothes'),  # 554
    (743, 'dish, dish aerial, dish antenna, saucer'),  # 555
    (3122, 'alarm clock, alarm'),  # 556
    (2401, 'ski lift'),  # 557
    (468, 'chain'),  # 558
    (1061, 'garage'),  # 559
    (1523, 'mechanical shovel'),  # 560
    (3059, 'wine rack'),  # 561
    (2843, 'tramway'),  # 562
    (2853, 'treadmill'),  # 563
    (1529, 'menu'),  # 564
    (214, 'block'),  # 565
    (3032, 'well'),  # 566
    (3071, 'witness stand'),  # 567
    (277, 'branch'),  # 568
    (813, 'duck'),  # 569
    (426, 'casserole'),  # 570
    (1039, 'frying pan'),  # 571
    (727, 'desk organizer'),  # 572
    (1508, 'mast'),  # 573
    (2490, 'spectacles, specs, eyeglasses, glasses'),  # 574
    (2299, 'service elevator'),  # 575
    (768, 'dollhouse'),  # 576
    (1172, 'hammock'),  # 577
    (537, 'clothes hanging'),  # 578
    (1847, 'photocopier'),  # 579
    (1664, 'notepad'),  # 580
    (1110, 'golf cart'),  # 581
    (1014, 'footpath'),  # 582
    (662, 'cross'),  # 583
    (121, 'baptismal font'),  # 584
    (227, 'boiler'),  # 585
    (2410, 'skip'),  # 586
    (2165, 'rotisserie'),  # 587
    (2696, 'tables'),  # 588
    (3005, 'water mill'),  # 589
    (1231, 'helmet'),  # 590
    (635, 'cover curtain'),  # 591
    (292, 'brick'),  # 592
    (2690, 'table runner'),  # 593
    (65, 'ashtray'),  # 594
    (2607, 'street box'),  # 595
    (2574, 'stick'),  # 596
    (1188, 'hangers'),  # 597
    (456, 'cells'),  # 598
    (2913, 'urinal'),  # 599
    (459, 'centerpiece'),  # 600
    (1955, 'portable fridge'),  # 601
    (827, 'dvds'),  # 602
    (1111, 'golf club'),  # 603
    (2412, 'skirting board'),  # 604
    (2997, 'water cooler'),  # 605
    (528, 'clipboard'),  # 606
    (366, 'camera, photographic camera'),  # 607
    (1863, 'pigeonhole'),  # 608
    (500, 'chips'),  # 609
    (1001, 'food processor'),  # 610
    (1958, 'post box'),  # 611
    (1441, 'lid'),  # 612
    (809, 'drum'),  # 613
    (210, 'blender'),  # 614
    (435, 'cave entrance'),  # 615
    (718, 'dental chair'),  # 616
    (1674, 'obelisk'),  # 617
    (388, 'canoe'),  # 618
    (1572, 'mobile'),  # 619
    (1584, 'monitors'),  # 620
    (1944, 'pool ball'),  # 621
    (674, 'cue rack'),  # 622
    (99, 'baggage carts'),  # 623
    (2352, 'shore'),  # 624
    (1019, 'fork'),  # 625
    (1763, 'paper filer'),  # 626
    (185, 'bicycle rack'),  # 627
    (554, 'coat rack'),  # 628
    (1066, 'garland'),  # 629
    (2508, 'sports bag'),  # 630
    (951, 'fish tank'),  # 631
    (2822, 'towel dispenser'),  # 632
    (415, 'carriage'),  # 633
    (297, 'brochure'),  # 634
    (1914, 'plaque'),  # 635
    (2619, 'stringer'),  # 636
    (1338, 'iron'),  # 637
    (2505, 'spoon'),  # 638
    (955, 'flag pole'),  # 639
    (2786, 'toilet brush'),  # 640
    (238, 'book stand'),  # 641
    (3000, 'water faucet, water tap, tap, hydrant'),  # 642
    (2763, 'ticket office'),  # 643
    (299, 'broom'),  # 644
    (822, 'dvd'),  # 645
    (1288, 'ice bucket'),  # 646
    (3101, 'carapace, shell, cuticle, shield'),  # 647
    (2894, 'tureen'),  # 648
    (992, 'folders'),  # 649
    (489, 'chess'),  # 650
    (2157, 'root'),  # 651
    (2309, 'sewing machine'),  # 652
    (1576, 'model'),  # 653
    (1810, 'pen'),  # 654
    (2964, 'violin'),  # 655
    (2662, 'sweatshirt'),  # 656
    (2087, 'recycling materials'),  # 657
    (1569, 'mitten'),  # 658
    (503, 'chopping board, cutting board'),  # 659
    (1505, 'mask'),  # 660
    (1468, 'log'),  # 661
    (1613, 'mouse, computer mouse'),  # 662
    (1138, 'grill'),  # 663
    (1256, 'hole'),  # 664
    (2715, 'target'),  # 665
    (2846, 'trash bag'),  # 666
    (477, 'chalk'),  # 667
    (2576, 'sticks'),  # 668
    (108, 'balloon'),  # 669
    (2245, 'score'),  # 670
    (1162, 'hair spray'),  # 671
    (2149, 'roll'),  # 672
    (2183, 'runner'),  # 673
    (858, 'engine'),  # 674
    (1324, 'inflatable glove'),  # 675
    (1055, 'games'),  # 676
    (1741, 'pallets'),  # 677
    (149, 'baskets'),  # 678
    (615, 'coop'),  # 679
    (825, 'dvd player'),  # 680
    (2143, 'rocking horse'),  # 681
    (304, 'buckets'),  # 682
    (283, 'bread rolls'),  # 683
    (2322, 'shawl'),  # 684
    (3017, 'watering can'),  # 685
    (2510, 'spotlights'),  # 686
    (1960, 'post-it'),  # 687
    (265, 'bowls'),  # 688
    (2282, 'security camera'),  # 689
    (2184, 'runner cloth'),  # 690
    (1461, 'lock'),  # 691
    (3113, 'alarm, warning device, alarm system'),  # 692
    (2372, 'side'),  # 693
    (2166, 'roulette'),  # 694
    (232, 'bone'),  # 695
    (693, 'cutlery'),  # 696
    (1945, 'pool balls'),  # 697
    (3039, 'wheels'),  # 698
    (2494, 'spice rack'),  # 699
    (1908, 'plant pots'),  # 700
    (2827, 'towel ring'),  # 701
    (280, 'bread box'),  # 702
    (2950, 'video'),  # 703
    (1044, 'funfair'),  # 704
    (288, 'breads'),  # 705
    (2863, 'tripod'),  # 706
    (1342, 'ironing board'),  # 707
    (2409, 'skimmer'),  # 708
    (1258, 'hollow'),  # 709
    (2249, 'scratching post'),  # 710
    (2862, 'tricycle'),  # 711
    (920, 'file box'),  # 712
    (1607, 'mountain pass'),  # 713
    (2802, 'tombstones'),  # 714
    (610, 'cooker'),  # 715
    (3129, 'card game, cards'),  # 716
    (1108, 'golf bag'),  # 717
    (2823, 'towel paper'),  # 718
    (476, 'chaise lounge'),  # 719
    (2641, 'sun'),  # 720
    (2788, 'toilet paper holder'),  # 721
    (2070, 'rake'),  # 722
    (1368, 'key'),  # 723
    (2903, 'umbrella stand'),  # 724
    (699, 'dartboard'),  # 725
    (2844, 'transformer'),  # 726
    (942, 'fireplace utensils'),  # 727
    (2663, 'sweatshirts'),  # 728
    (457, 'cellular telephone, cellular phone, cellphone, cell, mobile phone'),  # 729
    (2701, 'tallboy'),  # 730
    (2540, 'stapler'),  # 731
    (2231, 'sauna'),  # 732
    (2746, 'test tube'),  # 733
    (1738, 'palette'),  # 734
    (2350, 'shopping carts'),  # 735
    (2808, 'tools'),  # 736
    (2025, 'push button, push, button'),  # 737
    (2541, 'star'),  # 738
    (2156, 'roof rack'),  # 739
    (126, 'barbed wire'),  # 740
    (2512, 'spray'),  # 741
    (831, 'ear'),  # 742
    (2503, 'sponge'),  # 743
    (2039, 'racket'),  # 744
    (2774, 'tins'),  # 745
    (886, 'eyeglasses'),  # 746
    (919, 'file'),  # 747
    (2240, 'scarfs'),  # 748
    (2636, 'sugar bowl'),  # 749
    (963, 'flip flop'),  # 750
    (1218, 'headstones'),  # 751
    (1406, 'laptop bag'),  # 752
    (1420, 'leash'),  # 753
    (526, 'climbing frame'),  # 754
    (2639, 'suit hanger'),  # 755
    (975, 'floor spotlight'),  # 756
    (1921, 'plate rack'),  # 757
    (2305, 'sewer'),  # 758
    (1193, 'hard drive'),  # 759
    (2517, 'sprinkler'),  # 760
    (2809, 'tools box'),  # 761
    (1647, 'necklace'),  # 762
    (314, 'bulbs'),  # 763
    (2560, 'steel industry'),  # 764
    (545, 'club'),  # 765
    (1345, 'jack'),  # 766
    (775, 'door bars'),  # 767
    (603, 'control panel, instrument panel, control board, board, panel'),  # 768
    (1163, 'hairbrush'),  # 769
    (1641, 'napkin holder'),  # 770
    (1678, 'office'),  # 771
    (2450, 'smoke detector'),  # 772
    (2915, 'utensils'),  # 773
    (42, 'apron'),  # 774
    (2242, 'scissors'),  # 775
    (2741, 'terminal'),  # 776
    (1143, 'grinder'),  # 777
    (862, 'entry phone'),  # 778
    (1654, 'newspaper stand'),  # 779
    (1826, 'pepper shaker'),  # 780
    (1689, 'onions'),  # 781
    (3124, 'central processing unit, cpu, c p u , central processor, processor, mainframe'),  # 782
    (2710, 'tape'),  # 783
    (152, 'bat'),  # 784
    (549, 'coaster'),  # 785
    (360, 'calculator'),  # 786
    (1982, 'potatoes'),  # 787
    (1478, 'luggage rack'),  # 788
    (2203, 'salt'),  # 789
    (2612, 'street number'),  # 790
    (2956, 'viewpoint'),  # 791
    (2681, 'sword'),  # 792
    (437, 'cd'),  # 793
    (2171, 'rowing machine'),  # 794
    (1933, 'plug'),  # 795
    (3110, 'andiron, firedog, dog, dog-iron'),  # 796
    (1824, 'pepper'),  # 797
    (2803, 'tongs'),  # 798
    (234, 'bonfire'),  # 799
    (764, 'dog dish'),  # 800
    (177, 'belt'),  # 801
    (817, 'dumbbells'),  # 802
    (3145, 'videocassette recorder, vcr'),  # 803
    (1262, 'hook'),  # 804
    (864, 'envelopes'),  # 805
    (2359, 'shower faucet'),  # 806
    (2992, 'watch'),  # 807
    (1725, 'padlock'),  # 808
    (2667, 'swimming pool ladder'),  # 809
    (2484, 'spanners'),  # 810
    (1133, 'gravy boat'),  # 811
    (1667, 'notice board'),  # 812
    (2847, 'trash bags'),  # 813
    (932, 'fire alarm'),  # 814
    (1392, 'ladle'),  # 815
    (2573, 'stethoscope'),  # 816
    (2140, 'rocket'),  # 817
    (1046, 'funnel'),  # 818
    (264, 'bowling pins'),  # 819
    (2927, 'valve'),  # 820
    (2752, 'thermometer'),  # 821
    (679, 'cups'),  # 822
    (2493, 'spice jar'),  # 823
    (1658, 'night light'),  # 824
    (2466, 'soaps'),  # 825
    (1057, 'games table'),  # 826
    (2444, 'slotted spoon'),  # 827
    (2093, 'reel'),  # 828
    (2248, 'scourer'),  # 829
    (2432, 'sleeping robe'),  # 830
    (726, 'desk mat'),  # 831
    (816, 'dumbbell'),  # 832
    (1171, 'hammer'),  # 833
    (2766, 'tie'),  # 834
    (2900, 'typewriter'),  # 835
    (2313, 'shaker'),  # 836
    (488, 'cheese dish'),  # 837
    (2265, 'sea star'),  # 838
    (2043, 'racquet'),  # 839
    (332, 'butane gas cylinder'),  # 840
    (1771, 'paper weight'),  # 841
    (2320, 'shaving brush'),  # 842
    (2646, 'sunglasses'),  # 843
    (1089, 'gear shift'),  # 844
    (2826, 'towel rail'),  # 845
    (3148, 'adding machine, totalizer, totaliser'),  # 846
)
# fmt: on
