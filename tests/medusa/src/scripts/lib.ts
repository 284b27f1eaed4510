/** Shared by the exec scripts: find a live product by handle through Query. */
import type { MedusaContainer } from "@medusajs/framework/types"
import { ContainerRegistrationKeys } from "@medusajs/framework/utils"

export async function productByHandle(container: MedusaContainer, handle: string,
                                      fields: string[] = ["id", "handle"]) {
  if (!handle) throw new Error("a product handle is required")
  const query = container.resolve(ContainerRegistrationKeys.QUERY)
  const { data } = await query.graph({ entity: "product", fields, filters: { handle } })
  if (data.length !== 1) throw new Error(`no live product with handle ${handle}`)
  return data[0] as any
}

/** The script's result, one JSON line on stdout prefixed so callers can find it. */
export function report(result: unknown) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`)
}
