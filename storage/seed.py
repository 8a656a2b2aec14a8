"""A demo city for ``make run`` and the tests: deterministic, small, realistic.

One city > one district > two streets > three communities > six grids; a warden per grid, a
community doctor, a volunteer, a district admin, and about 200 residents in households.  Every
demo person gets a simulator identity (``sim-<id>``) and every grid a simulated group chat.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from storage import repo
from storage.console import set_password_hash
from storage.models import RegionLevel, Role, utcnow

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹"
    "彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀英华慧巧美霞平刚桂兰玉萍红建国志文斌宁海燕凤云春梅"

LAYOUT = {
    "street": [
        (
            "S01",
            "东湖街道",
            [("C0101", "桃园社区", ["G0101", "G0102"]), ("C0102", "杏林社区", ["G0103", "G0104"])],
        ),
        ("S02", "南岸街道", [("C0201", "滨江社区", ["G0201", "G0202"])]),
    ]
}


@dataclass
class DemoCity:
    city: repo.RegionInfo
    district: repo.RegionInfo
    grids: list[repo.RegionInfo] = field(default_factory=list)
    wardens: dict[str, int] = field(default_factory=dict)
    doctor_id: int = 0
    volunteer_id: int = 0
    admin_id: int = 0
    resident_ids: list[int] = field(default_factory=list)


def _name(rng: random.Random) -> str:
    given = rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.7 else "")
    return rng.choice(SURNAMES) + given


def _phone(rng: random.Random) -> str:
    return "1" + rng.choice("3589") + "".join(rng.choice("0123456789") for _ in range(9))


async def _sim_identity(conn: AsyncConnection, person_id: int, name: str) -> None:
    await repo.bind_identity(conn, person_id, "sim", f"sim-{person_id}", name)


async def seed_demo(
    conn: AsyncConnection, *, residents: int = 200, seed: int = 20200123, sim: bool = True
) -> DemoCity:
    """Create the demo city in an empty database; returns what was made."""
    rng = random.Random(seed)
    city = await repo.create_region(
        conn, code="C", name="江城市", level=RegionLevel.CITY, parent=None
    )
    district = await repo.create_region(
        conn, code="D01", name="江岸区", level=RegionLevel.DISTRICT, parent=city
    )
    demo = DemoCity(city, district)
    communities: list[repo.RegionInfo] = []
    for street_code, street_name, community_specs in LAYOUT["street"]:
        street = await repo.create_region(
            conn, code=street_code, name=street_name, level=RegionLevel.STREET, parent=district
        )
        for community_code, community_name, grid_codes in community_specs:
            community = await repo.create_region(
                conn,
                code=community_code,
                name=community_name,
                level=RegionLevel.COMMUNITY,
                parent=street,
            )
            communities.append(community)
            for n, grid_code in enumerate(grid_codes, start=1):
                grid = await repo.create_region(
                    conn,
                    code=grid_code,
                    name=f"{community_name}第{n}网格",
                    level=RegionLevel.GRID,
                    parent=community,
                )
                demo.grids.append(grid)

    async def staff(name: str, role: Role, scope: repo.RegionInfo, home: repo.RegionInfo) -> int:
        person_id = await repo.create_person(conn, name=name, region_id=home.id, phone=_phone(rng))
        await repo.grant_role(conn, person_id, role, scope.id)
        if sim:
            await _sim_identity(conn, person_id, name)
        return person_id

    for grid in demo.grids:
        demo.wardens[grid.code] = await staff(_name(rng), Role.WARDEN, grid, grid)
        if sim:
            await repo.create_group(
                conn,
                region_id=grid.id,
                channel="sim",
                external_id=f"grid-{grid.code}",
                name=f"{grid.name}居民群",
            )
    demo.doctor_id = await staff("华佗仁", Role.DOCTOR, communities[0], demo.grids[0])
    demo.volunteer_id = await staff(_name(rng), Role.VOLUNTEER, communities[0], demo.grids[1])
    demo.admin_id = await staff("区管理员", Role.ADMIN, district, demo.grids[0])

    made = 0
    while made < residents:
        grid = demo.grids[made % len(demo.grids)]
        building = f"{rng.randint(1, 12)}栋"
        door = f"{rng.randint(1, 6)}{rng.randint(0, 2)}{rng.randint(1, 4)}"
        household = await repo.find_or_create_household(conn, grid.id, building, door)
        for _ in range(min(rng.randint(1, 4), residents - made)):
            name = _name(rng)
            person_id = await repo.create_person(
                conn, name=name, region_id=grid.id, phone=_phone(rng), household_id=household
            )
            await repo.grant_role(conn, person_id, Role.RESIDENT, grid.id)
            if sim:
                await _sim_identity(conn, person_id, name)
            demo.resident_ids.append(person_id)
            made += 1
    return demo


DEMO_PASSWORD = "demo-2020"
"""The console password of every demo staff member (printed by ``make run``; demo only)."""


async def seed_demo_passwords(
    conn: AsyncConnection, demo: DemoCity, hash_password: Callable[[str], str]
) -> list[int]:
    """Give the demo's wardens, doctor and admin the console password ``DEMO_PASSWORD``;
    returns their ids (the admin first).  ``hash_password`` is the console's hasher, passed in
    because storage does not reach up into the console."""
    staff = [demo.admin_id, *demo.wardens.values(), demo.doctor_id]
    for person_id in staff:
        await set_password_hash(conn, person_id, hash_password(DEMO_PASSWORD), now=utcnow())
    return staff


DEMO_CLARIFICATIONS = [
    (
        "喝白酒或高度酒可以预防新冠病毒感染",
        "false",
        "饮酒不能预防新冠病毒感染。酒精消毒只对物体表面有效，喝进体内起不到杀灭病毒的作用，"
        "过量饮酒反而伤害肝脏、降低免疫力。",
        "世界卫生组织“破除谣言”专栏",
    ),
    (
        "5G基站会传播新冠病毒",
        "false",
        "病毒不能通过无线电波或移动网络传播。新冠病毒在没有5G网络的国家和地区同样传播，"
        "它通过呼吸道飞沫和密切接触在人与人之间传播。",
        "世界卫生组织“破除谣言”专栏",
    ),
    (
        "洗热水澡或用吹风机吹手可以杀死新冠病毒",
        "false",
        "洗热水澡不会改变体温，也不能预防感染；吹风机不能杀死手上的病毒。"
        "有效的做法是用肥皂和流动水洗手至少20秒，或使用含酒精的免洗洗手液。",
        "世界卫生组织“破除谣言”专栏",
    ),
    (
        "小区明天起全面封闭，所有居民不得外出买菜",
        "misleading",
        "社区没有发布全面封闭的通知。如有管控措施，会由社区和网格员通过本助手和小区公告"
        "正式发布，并同步保障买菜、就医等基本生活需要。请以正式通知为准。",
        "江岸区疫情防控指挥部",
    ),
]


async def seed_demo_clarifications(conn: AsyncConnection, db: Any, *, admin_id: int) -> int:
    """A few published clarifications so the demo can answer rumors out of the box."""
    from datetime import UTC, datetime

    from storage.rumors import insert_clarification

    now = datetime.now(UTC)
    for claim, verdict, explanation, source in DEMO_CLARIFICATIONS:
        await insert_clarification(
            conn,
            db,
            claim=claim,
            verdict=verdict,
            explanation=explanation,
            source_name=source,
            source_url="",
            region_id=None,
            scope_path=None,
            expires_at=None,
            status="published",
            version=1,
            published_at=now,
            withdrawn_at=None,
            created_by=admin_id,
            updated_by=admin_id,
            created_at=now,
            updated_at=now,
        )
    return len(DEMO_CLARIFICATIONS)
